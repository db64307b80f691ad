"""``helexa bench run``: which cells to measure against a target, stamped with its build, skipping cells
already measured enough times for that build; failures are recorded and the run goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

from helexa.bench.scenarios import DIALECTS, control, measure, pull_cost, swap_cost
from helexa.bench.store import Build, Result, Store

__all__ = ["SCENARIOS", "Plan", "run_once"]

SCENARIOS = ("chat", "anthropic", "responses", "swap", "evict", "pull")
CELL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Plan:
    """How much to measure. ``quick``: a run that finishes within two minutes on a CPU."""

    models: Sequence[str] = ()
    scenarios: Sequence[str] = SCENARIOS
    repeat: int = 3
    quick: bool = False

    @property
    def levels(self) -> tuple[int, ...]:
        """Concurrency levels of the chat sweep."""
        return (1, 2) if self.quick else (1, 2, 4, 8)

    @property
    def requests(self) -> int:
        """Requests per cell and concurrency level (at least the level)."""
        return 4 if self.quick else 16

    @property
    def max_tokens(self) -> int:
        """Tokens asked for per request."""
        return 32 if self.quick else 128


async def _json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _stamp(session: aiohttp.ClientSession, url: str) -> tuple[Build, str, list[str], dict[str, str]]:
    """The target's build (helexa version and sha, engines with their versions, devices), its role, the models it
    offers (warm ones first) and their quantisations."""
    version = await _json(session, f"{url}/version")
    role = str((await _json(session, f"{url}/")).get("role") or "gateway")  # the app that answers says
    engines: set[str] = set()
    devices: list[str] = []
    quants: dict[str, str] = {}
    if role == "gateway":
        fleet = await _json(session, f"{url}/fleet")
        for neuron in fleet.get("neurons", []):
            named = neuron.get("engines") or {name: "" for name in neuron.get("harnesses", [])}
            engines.update(version or name for name, version in named.items())
            devices += [d.get("name", "") for d in neuron.get("devices", [])] or ["cpu"]
        rank = {"loaded": 0, "loading": 1, "downloading": 2, "available": 3}  # what is warm first
        cards = sorted((c for c in fleet.get("models", []) if c.get("status") in rank), key=lambda c: rank[c["status"]])
        models = [c["id"] for c in cards]
        quants = {c["id"]: c.get("quant", "") for c in cards}
    else:
        listed = await _json(session, f"{url}/models")
        models = [m["id"] for m in sorted(listed.get("models", []), key=lambda m: m.get("status") != "loaded")]
        discovery = await _json(session, f"{url}/discovery")
        engines.update(v or k for k, v in (discovery.get("engines") or {}).items())
        devices = [d.get("name", "") for d in discovery.get("devices", [])] or ["cpu"]
    build = Build(
        target=url,
        helexa_version=str(version.get("version", "")),
        git_sha=str(version.get("git_sha", "")),
        engine=", ".join(sorted(e for e in engines if e)),
        devices=",".join(sorted(set(devices))),
    )
    return build, role, models, quants


async def run_once(
    url: str,
    store: Store,
    plan: Plan,
    *,
    api_key: str = "",
    admin_key: str = "",
    say: Callable[[str], None] = print,
) -> int:
    """Measure every cell of ``plan`` not yet measured ``plan.repeat`` times for the target's build; return how
    many cells were measured (failed ones included). A target that cannot be reached is one failed cell."""
    url = url.rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    timeout = aiohttp.ClientTimeout(total=CELL_TIMEOUT_S, sock_connect=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        try:
            build, role, offered, quants = await _stamp(session, url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            run = store.start_run(Build(target=url, helexa_version="unreachable", git_sha=""))
            store.add(run, Result("-", "stamp", 0, ok=False, error=f"{type(exc).__name__}: {exc}"[:300]))
            say(f"target {url} did not answer: {exc}")
            return 1
        models = list(plan.models) or offered[:1]
        if not models:
            say(f"target {url} offers no model to measure")
            return 0
        run = store.start_run(build)
        say(f"benchmarking {url} (build {build.id}, engine {build.engine or '?'}, devices {build.devices or '?'})")
        measured = 0
        for model in models:
            for scenario in plan.scenarios:
                if role == "neuron" and scenario in ("anthropic", "responses"):
                    continue  # a neuron speaks OpenAI only
                for level in plan.levels if scenario == "chat" else (1,):
                    if store.measured(build, model, scenario, level) >= plan.repeat:
                        say(f"  {model} {scenario} c={level}: measured {plan.repeat}x for this build, skipped")
                        continue
                    result = await _cell(
                        session,
                        url,
                        role=role,
                        admin_key=admin_key,
                        model=model,
                        offered=offered,
                        scenario=scenario,
                        level=level,
                        plan=plan,
                    )
                    if result is None:
                        say(f"  {model} {scenario}: its files are already on the target, nothing to measure")
                        continue
                    result.quant = quants.get(model, "")
                    store.add(run, result)
                    measured += 1
                    say("  " + describe(result))
        return measured


async def _cell(
    session: aiohttp.ClientSession,
    url: str,
    *,
    role: str,
    admin_key: str,
    model: str,
    offered: list[str],
    scenario: str,
    level: int,
    plan: Plan,
) -> Result | None:
    try:
        if scenario == "pull":
            async with _admin(admin_key) as admin:
                pull = pull_cost(
                    session, url, model=model, max_tokens=plan.max_tokens, card=control(admin, url, role).card
                )
                return await asyncio.wait_for(pull, CELL_TIMEOUT_S)
        if scenario in ("swap", "evict"):
            other = ""
            if scenario == "evict":
                other = next((m for m in offered if m != model), "")
                if not other:
                    return Result(model, scenario, 1, ok=False, error="eviction needs a second model on the target")
            async with _admin(admin_key) as admin:
                ctl = control(admin, url, role)
                cost = swap_cost(
                    session,
                    url,
                    model=model,
                    max_tokens=plan.max_tokens,
                    unload=ctl.unload,
                    status=ctl.status,
                    other=other,
                    card=ctl.card,
                )
                return await asyncio.wait_for(cost, CELL_TIMEOUT_S)
        if scenario not in DIALECTS:
            return Result(model, scenario, level, ok=False, error=f"no scenario {scenario!r}")
        requests = max(plan.requests, level)
        return await asyncio.wait_for(
            measure(
                session,
                url,
                model=model,
                scenario=scenario,
                concurrency=level,
                requests=requests,
                max_tokens=plan.max_tokens,
            ),
            CELL_TIMEOUT_S,
        )
    except TimeoutError:
        return Result(model, scenario, level, ok=False, error=f"no answer within {CELL_TIMEOUT_S:.0f}s")


def _admin(admin_key: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"} if admin_key else {})


def describe(result: Result) -> str:
    """One line for the console."""
    head = f"{result.model} {result.scenario} c={result.concurrency}:"
    if not result.ok:
        return f"{head} FAILED {result.error}"
    if result.scenario == "pull":
        return f"{head} {result.detail}"
    if result.scenario in ("swap", "evict"):
        return f"{head} {result.detail}: first token {result.swap_seconds:.2f}s after the unload"
    tps = f"{result.tokens_per_second:.1f} tok/s" if result.tokens_per_second else "- tok/s"
    itl = f"{result.itl_p50 * 1000:.0f}ms" if result.itl_p50 else "-"
    return (
        f"{head} ttft p50 {result.ttft_p50 * 1000:.0f}ms p95 {result.ttft_p95 * 1000:.0f}ms, itl {itl}, {tps}, "
        f"latency p50 {result.latency_p50:.2f}s ({result.requests} requests)"
    )
