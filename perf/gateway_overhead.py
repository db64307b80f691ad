"""Gateway overhead: CPU per request and added latency, against a bare aiohttp pass-through, in one run.

    python perf/gateway_overhead.py [--requests 2000] [--streams 200]

Three processes: a fast fake neuron (answers at once; streams 64 chunks paced 2 ms apart), the floor (a
minimal aiohttp proxy in front of it: one session, bytes through) and ``helexa run --role gateway`` in front
of it. For each path it sends the same load — non-streaming and streaming, at concurrency 1 and 32 — and
reads the proxy's CPU time from /proc (sum_exec_runtime) before and after. Prints CPU per request, time to
first chunk and the gateway/floor ratios. All servers bind 127.0.0.1 on free ports and are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
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


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far: ``se.sum_exec_runtime`` (ms with ns decimals) from
    /proc/<pid>/task/*/sched, because /proc/<pid>/stat counts 10 ms ticks."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                total += float(line.split(":")[1])
    return total / 1000


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


async def one(session: aiohttp.ClientSession, url: str, stream: bool) -> float:
    """Time to the first body chunk, in seconds; reads the whole response."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "stream": stream}
    began = time.perf_counter()
    async with session.post(url, json=body) as resp:
        first = 0.0
        async for _ in resp.content.iter_any():
            first = first or time.perf_counter()
        assert resp.status == 200
    return first - began


async def load(session, url: str, *, stream: bool, count: int, concurrency: int) -> list[float]:
    results: list[float] = []
    queue = iter(range(count))

    async def worker():
        for _ in queue:
            results.append(await one(session, url, stream))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


async def run(args: argparse.Namespace) -> None:
    neuron_port, floor_port, gateway_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="helexa-bench-"))
    config = work / "gateway.toml"
    config.write_text(
        f'[server]\nlog_level = "warning"\n[gateway]\nlisten = "127.0.0.1:{gateway_port}"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\npoll_interval_seconds = 1.0\n'
        f'[[neurons]]\nname = "fast"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    if args.auth:  # a named key with every limit on (none is reached): the cost of checking them
        with config.open("a") as fh:
            fh.write(
                '[[auth.keys]]\nname = "bench"\nkey = "sk-bench"\nrequests_per_minute = 100000000\n'
                "max_concurrent = 100000\ntokens_per_hour = 1000000000000\n"
            )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
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
        "gateway": subprocess.Popen(
            [sys.executable, "-m", "helexa", "run", "--role", "gateway", "--config", str(config)], **quiet
        ),
    }
    urls = {
        "direct": f"http://127.0.0.1:{neuron_port}/v1/chat/completions",
        "floor": f"http://127.0.0.1:{floor_port}/v1/chat/completions",
        "gateway": f"http://127.0.0.1:{gateway_port}/v1/chat/completions",
    }
    rows = []
    try:
        connector = aiohttp.TCPConnector(limit=0)
        headers = {"Authorization": "Bearer sk-bench"} if args.auth else {}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            for url in urls.values():
                await wait_ready(session, url)
            for stream, count in ((False, args.requests), (True, args.streams)):
                for concurrency in (1, 32):
                    if args.only and f"{'stream' if stream else 'non-stream'} c={concurrency}" not in args.only:
                        continue
                    samples: dict[str, list[tuple[float, float]]] = {n: [] for n in urls}
                    for url in urls.values():  # warm-up
                        await load(session, url, stream=stream, count=min(count, 50), concurrency=concurrency)
                    for round_ in range(args.rounds):
                        order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
                        for name in order:
                            pid = procs[name if name != "direct" else "neuron"].pid
                            before = cpu_seconds(pid)
                            ttfc = await load(session, urls[name], stream=stream, count=count, concurrency=concurrency)
                            samples[name].append(
                                ((cpu_seconds(pid) - before) / count * 1000, statistics.median(ttfc) * 1000)
                            )
                    row = {"stream": stream, "concurrency": concurrency}
                    for name, values in samples.items():
                        row[name] = {
                            "cpu_ms": statistics.median(v[0] for v in values),
                            "ttfc_ms": statistics.median(v[1] for v in values),
                        }
                    rows.append(row)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    print(
        f"gateway overhead benchmark: medians of {args.rounds} alternating rounds of {args.requests} requests / "
        f"{args.streams} streams (64 chunks paced 2 ms)"
    )
    print(
        f"{'load':<22}{'floor cpu/req':>14}{'gateway cpu/req':>17}{'ratio':>8}"
        f"{'direct ttfc':>13}{'floor +':>9}{'gateway +':>11}"
    )
    for row in rows:
        label = f"{'stream' if row['stream'] else 'non-stream'} c={row['concurrency']}"
        f, g, d = row["floor"], row["gateway"], row["direct"]
        print(
            f"{label:<22}{f['cpu_ms']:>11.3f} ms{g['cpu_ms']:>14.3f} ms{g['cpu_ms'] / f['cpu_ms']:>8.2f}"
            f"{d['ttfc_ms']:>10.2f} ms{f['ttfc_ms'] - d['ttfc_ms']:>+7.2f}ms{g['ttfc_ms'] - d['ttfc_ms']:>+9.2f}ms"
        )
    print("targets: cpu/req ratio <= 1.3; gateway added time to first chunk p50 at c=1 <= 0.5 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per load; medians are printed")
    parser.add_argument("--auth", action="store_true", help="a named API key with limits on the gateway")
    parser.add_argument(
        "--only", action="append", default=[], metavar="LOAD", help="run only this load (e.g. 'non-stream c=32')"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
