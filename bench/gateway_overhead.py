"""Gateway overhead: CPU per request and added time to first chunk, against a bare aiohttp pass-through, in one run.

    python bench/gateway_overhead.py [--requests 2000] [--streams 200] [--no-auth] [--profile FILE]

Three processes: a fast fake neuron (answers at once; streams 64 chunks, as fast as it can or paced 2 ms apart), the
floor (a minimal aiohttp + uvloop proxy in front of it: one session, bytes through) and ``helexa run --role
gateway`` in front of it, as an operator runs it: a named key with per-key limits (none reached) and metrics on
(``--no-auth``: open). With two or more cores the proxy under test runs pinned to its own core, the fake neuron and
this load generator on another. Cells: non-streaming at concurrency 1 and 32, streaming 64 chunks at 1 and 32, and
paced streaming (2 ms a chunk) at 32. For each cell every path gets the same load in alternating rounds; the proxy's
CPU time (its whole process tree, /proc sum_exec_runtime) before and after gives CPU per request. Prints medians,
the gateway/floor ratio per cell and the time to first chunk (p50) each proxy adds over the neuron alone. ``--before
DIR`` runs the gateway of another checkout (a git worktree of the commit before a change) as a fourth path in the
same rounds, so a change is measured against its own past in one run. ``--profile FILE`` runs the gateway under
cProfile (the numbers then include the profiler's cost) and writes its stats for the paced cell. All servers bind
127.0.0.1 on free ports and are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from loopback import free_port

HERE = Path(__file__).resolve().parent
MODEL = "bench-model"
PACED = "bench-paced"
# (label, model, stream, concurrency)
CELLS = [
    ("non-stream c=1", MODEL, False, 1),
    ("non-stream c=32", MODEL, False, 32),
    ("stream c=1", MODEL, True, 1),
    ("stream c=32", MODEL, True, 32),
    ("paced stream c=32", PACED, True, 32),
]
TARGETS = {"paced stream c=32": 1.0, "non-stream c=32": 1.3}  # every other cell: 1.2


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` and of its descendants so far: ``se.sum_exec_runtime`` (ms with ns
    decimals) from /proc/<pid>/task/*/sched, because /proc/<pid>/stat counts 10 ms ticks."""
    total = 0.0
    for process in (pid, *descendants(pid)):
        try:
            for task in Path(f"/proc/{process}/task").iterdir():
                for line in (task / "sched").read_text().splitlines():
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":")[1])
        except OSError:  # it ended meanwhile
            continue
    return total / 1000


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(
                    int(entry.name)
                )
            except (OSError, IndexError):
                continue
    found, todo = [], list(children.get(pid, ()))
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], ()))
    return found


def pin(pid: int, cores: set[int]) -> None:
    """Run ``pid`` (every thread) on ``cores`` only."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
    for _ in range(300):
        try:
            async with session.post(url, json=body) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.05)
    raise TimeoutError(url)


async def one(session: aiohttp.ClientSession, url: str, model: str, stream: bool) -> float:
    """Time to the first body chunk, in seconds; reads the whole response."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    began = time.perf_counter()
    async with session.post(url, json=body) as resp:
        first = 0.0
        async for _ in resp.content.iter_any():
            first = first or time.perf_counter()
        assert resp.status == 200
    return first - began


async def load(session, url: str, *, model: str, stream: bool, count: int, concurrency: int) -> list[float]:
    results: list[float] = []
    queue = iter(range(count))

    async def worker():
        for _ in queue:
            results.append(await one(session, url, model, stream))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def gateway_config(args: argparse.Namespace, port: int, neuron_port: int) -> str:
    """A gateway in front of the fake neuron, as an operator runs it: a named key with every limit on (none is
    reached: the cost of checking them), metrics on, the default log level (an access line per request)."""
    text = (
        f'[server]\nlog_level = "{args.log_level}"\n[gateway]\nlisten = "127.0.0.1:{port}"\n'
        f'metrics_listen = "127.0.0.1:{free_port()}"\npoll_interval_seconds = 1.0\n'
        f'[[neurons]]\nname = "fast"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    if not args.no_auth:
        text += (
            '[[auth.keys]]\nname = "bench"\nkey = "sk-bench"\nrequests_per_minute = 100000000\n'
            "max_concurrent = 100000\ntokens_per_hour = 1000000000000\n"
        )
    return text


async def run(args: argparse.Namespace) -> None:
    neuron_port, floor_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="helexa-bench-"))
    gateways = {"gateway": HERE.parent, **({"before": Path(args.before)} if args.before else {})}
    ports = {name: free_port() for name in gateways}
    for name in gateways:
        (work / f"{name}.toml").write_text(gateway_config(args, ports[name], neuron_port))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    profiler = ["-m", "cProfile", "-o", args.profile] if args.profile else []
    procs = {
        "neuron": subprocess.Popen(
            [sys.executable, str(HERE / "upstreams.py"), "neuron", "--port", str(neuron_port)], **quiet
        ),
        "floor": subprocess.Popen(
            [
                sys.executable,
                str(HERE / "upstreams.py"),
                "floor",
                "--port",
                str(floor_port),
                "--upstream",
                f"http://127.0.0.1:{neuron_port}",
            ],
            **quiet,
        ),
        **{
            name: subprocess.Popen(  # `python -m helexa` in the tree's directory runs that tree's helexa
                [
                    sys.executable,
                    *profiler,
                    "-m",
                    "helexa",
                    "run",
                    "--role",
                    "gateway",
                    "--config",
                    str(work / f"{name}.toml"),
                ],
                cwd=tree,
                **quiet,
            )
            for name, tree in gateways.items()
        },
    }
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:  # the proxies on one core; the neuron and the load generator on another
        pin(procs["floor"].pid, {cores[0]})
        for name in gateways:
            pin(procs[name].pid, {cores[0]})
        pin(procs["neuron"].pid, {cores[1]})
        os.sched_setaffinity(0, {cores[1]})
    urls = {
        "direct": f"http://127.0.0.1:{neuron_port}/v1/chat/completions",
        "floor": f"http://127.0.0.1:{floor_port}/v1/chat/completions",
        **{name: f"http://127.0.0.1:{ports[name]}/v1/chat/completions" for name in gateways},
    }
    rows = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        headers = {} if args.no_auth else {"Authorization": "Bearer sk-bench"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            for url in urls.values():
                await wait_ready(session, url)
            for label, model, stream, concurrency in CELLS:
                if args.only and label not in args.only:
                    continue
                count = args.streams if stream else args.requests
                samples: dict[str, list[tuple[float, float]]] = {n: [] for n in urls}
                for url in urls.values():  # warm-up
                    await load(session, url, model=model, stream=stream, count=min(count, 50), concurrency=concurrency)
                for round_ in range(args.rounds):
                    order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
                    for name in order:
                        pid = procs[name if name != "direct" else "neuron"].pid
                        before = cpu_seconds(pid)
                        ttfc = await load(
                            session, urls[name], model=model, stream=stream, count=count, concurrency=concurrency
                        )
                        samples[name].append(((cpu_seconds(pid) - before) / count * 1e6, statistics.median(ttfc) * 1e3))
                row = {"label": label}
                for name, values in samples.items():
                    row[name] = {
                        "cpu_us": statistics.median(v[0] for v in values),
                        "ttfc_ms": statistics.median(v[1] for v in values),
                    }
                rows.append(row)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGINT if proc is procs["gateway"] and args.profile else signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    pinned = "proxy pinned to its own core" if len(cores) >= 2 else "one core: nothing pinned"
    print(
        f"gateway overhead benchmark ({'open' if args.no_auth else 'a named key with limits'}, metrics on, {pinned}):"
        f" medians of {args.rounds} alternating rounds of {args.requests} requests / {args.streams} streams"
    )
    before = "before" in gateways
    print(
        f"{'cell':<20}{'floor µs/req':>13}{'gateway µs/req':>16}{'ratio':>7}{'target':>8}"
        + (f"{'before µs/req':>15}{'ratio':>7}" if before else "")
        + f"{'direct ttfc':>13}{'floor +':>10}{'gateway +':>11}"
        + (f"{'before +':>10}" if before else "")
    )
    for row in rows:
        f, g, d = row["floor"], row["gateway"], row["direct"]
        target = TARGETS.get(row["label"], 1.2)
        b = row.get("before")
        print(
            f"{row['label']:<20}{f['cpu_us']:>13.0f}{g['cpu_us']:>16.0f}{g['cpu_us'] / f['cpu_us']:>7.2f}"
            f"{'<=' + format(target, '.1f'):>8}"
            + (f"{b['cpu_us']:>15.0f}{b['cpu_us'] / f['cpu_us']:>7.2f}" if b else "")
            + f"{d['ttfc_ms']:>10.2f} ms{f['ttfc_ms'] - d['ttfc_ms']:>+8.2f}ms{g['ttfc_ms'] - d['ttfc_ms']:>+9.2f}ms"
            + (f"{b['ttfc_ms'] - d['ttfc_ms']:>+8.2f}ms" if b else "")
        )
    print("targets: cpu/req ratio per cell as shown; paced cell: gateway's added ttfc p50 <= the floor's + 0.3 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per load; medians are printed")
    parser.add_argument("--no-auth", action="store_true", help="an open gateway (default: a named key, limits)")
    parser.add_argument("--log-level", default="info", help="the gateway's (info, the default: an access line each)")
    parser.add_argument(
        "--before", default="", metavar="DIR", help="also run the gateway of another checkout (e.g. a git worktree)"
    )
    parser.add_argument("--profile", default="", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    parser.add_argument(
        "--only", action="append", default=[], metavar="LOAD", help="run only this cell (e.g. 'paced stream c=32')"
    )
    args = parser.parse_args()
    args.before = str(Path(args.before).resolve()) if args.before else ""
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
