"""CPU per chunk of the gateway's dialect translation next to plain pass-through, in one run.

    python bench/translation_overhead.py [--streams 60] [--rounds 5]

Starts the fast fake neuron (bench/upstreams.py: 64 chunks per stream, paced 2 ms) and ``helexa run --role
gateway`` in front of it, then sends the same conversation as streaming OpenAI chat (relayed untouched),
streaming Anthropic Messages and streaming Responses, alternating over several rounds. Prints the gateway's
CPU per stream and per chunk for each (from /proc sum_exec_runtime) and the ratios to pass-through.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
from gateway_overhead import cpu_seconds, free_port

HERE = Path(__file__).resolve().parent
MODEL = "bench-paced"  # the fake neuron paces this one's chunks (bench/upstreams.py)
CHUNKS = 64
BODIES = {
    "openai chat (pass-through)": (
        "/v1/chat/completions",
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hello"}]},
    ),
    "anthropic messages": (
        "/v1/messages",
        {"model": MODEL, "stream": True, "max_tokens": 128, "messages": [{"role": "user", "content": "hello"}]},
    ),
    "openai responses": ("/v1/responses", {"model": MODEL, "stream": True, "input": "hello"}),
}


async def one(session: aiohttp.ClientSession, url: str, body: dict) -> None:
    async with session.post(url, json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for _ in resp.content.iter_any():
            pass


async def run(args: argparse.Namespace) -> None:
    neuron_port, gateway_port, metrics_port = free_port(), free_port(), free_port()
    config = Path(tempfile.mkdtemp(prefix="helexa-bench-")) / "gateway.toml"
    config.write_text(
        f'[server]\nlog_level = "warning"\n[gateway]\nlisten = "127.0.0.1:{gateway_port}"\n'
        f'metrics_listen = "127.0.0.1:{metrics_port}"\n'
        f'[[neurons]]\nname = "fast"\nendpoint = "http://127.0.0.1:{neuron_port}"\n'
    )
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    neuron = subprocess.Popen(
        [sys.executable, str(HERE / "upstreams.py"), "neuron", "--port", str(neuron_port)], **quiet
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "helexa", "run", "--role", "gateway", "--config", str(config)], **quiet
    )
    base = f"http://127.0.0.1:{gateway_port}"
    samples: dict[str, list[float]] = {name: [] for name in BODIES}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(300):
                try:
                    await one(
                        session, base + BODIES["openai chat (pass-through)"][0], BODIES["openai chat (pass-through)"][1]
                    )
                    break
                except (aiohttp.ClientError, AssertionError):
                    await asyncio.sleep(0.05)
            for path, body in BODIES.values():  # warm-up
                for _ in range(5):
                    await one(session, base + path, body)
            for round_ in range(args.rounds):
                names = list(BODIES) if round_ % 2 == 0 else list(reversed(BODIES))
                for name in names:
                    path, body = BODIES[name]
                    before = cpu_seconds(gateway.pid)
                    await asyncio.gather(*(one(session, base + path, body) for _ in range(args.streams)))
                    samples[name].append((cpu_seconds(gateway.pid) - before) / args.streams * 1000)
    finally:
        for proc in (gateway, neuron):
            proc.send_signal(signal.SIGTERM)
        for proc in (gateway, neuron):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(
        f"translation overhead: medians of {args.rounds} rounds of {args.streams} concurrent streams, "
        f"{CHUNKS} chunks each"
    )
    floor = statistics.median(samples["openai chat (pass-through)"])
    for name, values in samples.items():
        per_stream = statistics.median(values)
        print(
            f"{name:<28} {per_stream:8.3f} ms/stream {per_stream / CHUNKS * 1000:8.1f} µs/chunk  "
            f"ratio {per_stream / floor:5.2f}"
        )
    print("target: anthropic streaming translation <= 3x pass-through per chunk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
