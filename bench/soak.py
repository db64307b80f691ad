"""Soak: many requests through ``helexa run --role both`` (gateway + neuron) and whether memory or file
descriptors grow.

    python bench/soak.py [--requests 30000] [--concurrency 16] [--max-growth 5]

A scripted engine (tests/fakes/fake_engine.py, a real process) serves one model through the neuron's external
harness. The mix: OpenAI chat (whole and streamed), Anthropic messages (streamed), Responses, and 10 % bad
requests (unknown model, malformed JSON, wrong field types). RSS and open file descriptors of the helexa process
are read after a warm-up (the first 10 %) and at the end; the growth is printed and the exit status is 1 when
either grows by more than ``--max-growth`` percent (file descriptors: plus 4, or at most two per client of
``--concurrency`` — what the two connection pools may keep open — whichever is more).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
MODEL = "soak-model"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def request_for(rng: random.Random, base: str) -> tuple[str, bytes]:
    messages = [{"role": "user", "content": f"hello {rng.randrange(10**6)}"}]
    kind = rng.randrange(10)
    if kind == 0:
        return f"{base}/v1/chat/completions", rng.choice(
            [b'{"model": "nope", "messages": []}', b'{"model": ', b'{"model": "soak-model", "messages": 5}']
        )
    if kind in (1, 2, 3):
        body = {"model": MODEL, "messages": messages}
        return f"{base}/v1/chat/completions", json.dumps(body).encode()
    if kind in (4, 5):
        body = {"model": MODEL, "messages": messages, "stream": True}
        return f"{base}/v1/chat/completions", json.dumps(body).encode()
    if kind in (6, 7):
        body = {"model": MODEL, "max_tokens": 16, "messages": messages, "stream": True}
        return f"{base}/v1/messages", json.dumps(body).encode()
    body = {"model": MODEL, "input": messages[0]["content"], "stream": kind == 8}
    return f"{base}/v1/responses", json.dumps(body).encode()


async def load(base: str, count: int, concurrency: int, seed: int) -> dict[int, int]:
    rng = random.Random(seed)
    statuses: dict[int, int] = {}
    left = count
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                url, body = request_for(rng, base)
                headers = {"Content-Type": "application/json"}
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="helexa-soak-"))
    engine_port, gateway_port, metrics_port, neuron_port = (free_port() for _ in range(4))
    config = work / "helexa.toml"
    config.write_text(
        f'[server]\nlog_level = "warning"\n[gateway]\nlisten = "127.0.0.1:{gateway_port}"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n[neuron]\nlisten = "127.0.0.1:{neuron_port}"\n'
        f'state_dir = "{work}"\nmodel_dirs = ["{work}"]\npreload = ["{MODEL}"]\n'
        f'[[models]]\nid = "{MODEL}"\nharness = "external"\nsource = "http://127.0.0.1:{engine_port}/v1"\n'
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    engine = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/fakes/fake_engine.py"), "--port", str(engine_port), "--model", MODEL],
        **quiet,
    )
    helexa = subprocess.Popen(
        [sys.executable, "-m", "helexa", "run", "--role", "both", "--config", str(config)], **quiet
    )
    base = f"http://127.0.0.1:{gateway_port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if asyncio.run(_loaded(base)):
                    break
            except aiohttp.ClientError:
                pass
            time.sleep(0.3)
        warm = max(args.requests // 10, 100)
        asyncio.run(load(base, warm, args.concurrency, 1))
        rss0, fds0 = rss_kib(helexa.pid), fds(helexa.pid)
        began = time.monotonic()
        statuses = asyncio.run(load(base, args.requests, args.concurrency, 2))
        seconds = time.monotonic() - began
        rss1, fds1 = rss_kib(helexa.pid), fds(helexa.pid)
    finally:
        helexa.terminate()
        engine.terminate()
        helexa.wait(timeout=30)
        engine.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    rss_growth = 100 * (rss1 - rss0) / rss0
    fd_growth = 100 * (fds1 - fds0) / fds0
    print(f"soak: {args.requests} requests in {seconds:.1f}s ({args.requests / seconds:.0f}/s), statuses {statuses}")
    memory = f"RSS {rss0 / 1024:.1f} MiB -> {rss1 / 1024:.1f} MiB ({rss_growth:+.1f}%)"
    fd_allowance = max(fds0 * args.max_growth / 100 + 4, 2 * args.concurrency)
    print(f"{memory}; fds {fds0} -> {fds1} ({fd_growth:+.1f}%, allowed +{fd_allowance:.0f})")
    if any(status >= 500 for status in statuses):
        print("FAIL: 5xx answers")
        return 1
    # A leak grows with the requests; connection pools grow with the concurrency the machine happened to reach
    # (a busy machine keeps more connections open at once): two hops in this process (gateway -> neuron,
    # neuron -> engine) may each pool up to one connection per client, whatever the baseline's moment held.
    if rss_growth > args.max_growth or fds1 > fds0 + fd_allowance:
        print(f"FAIL: growth above {args.max_growth}%")
        return 1
    print(f"ok: growth within {args.max_growth}%")
    return 0


async def _loaded(base: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/v1/models") as resp:
        data = (await resp.json())["data"]
    return any(m["id"] == MODEL and m.get("status") == "loaded" for m in data)


if __name__ == "__main__":
    sys.exit(main())
