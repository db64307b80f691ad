"""Interactive time to first token while a batch runs, against an idle fleet, in one run.

    python bench/batch_ttft.py [--rounds 3] [--samples 12] [--lines 40] [--models-dir DIR]

One ``helexa run --role both`` serving the demo model (SmolLM2-135M on llama.cpp, two slots) on this machine's
CPU. In alternating rounds, ``--samples`` streamed chat requests are sent one after another (a short prompt, 16
tokens) and the time to their first token is measured:

- **idle**: nothing else runs;
- **batch**: a batch of ``--lines`` requests (64 tokens each) runs through ``/v1/batches`` at the same time — the
  gateway's runner sends a line only while the replica serves nothing else, so an interactive request shares the
  engine with at most one line;
- **flood** (the baseline a batch API replaces): the same ``--lines`` requests sent directly, four at a time, as a
  client without a batch API would.

Prints each round's p50/p90 TTFT, then the medians and the ratios to idle. ``--models-dir``: where the demo's GGUF
is (or is fetched to, from PyPI, on the first run). Everything binds 127.0.0.1 and is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
from loopback import free_port

from helexa.neuron.demo import DEMO_MODEL_ID

KEY = "sk-bench"


def line_body(i: int) -> dict:
    return {
        "model": DEMO_MODEL_ID,
        "messages": [{"role": "user", "content": f"Write a short story about the number {i}."}],
        "max_tokens": 64,
        "temperature": 0,
    }


async def ttft(api: openai.AsyncOpenAI, i: int) -> float:
    """Seconds from sending a streamed chat request to its first content token."""
    began = time.perf_counter()
    stream = await api.chat.completions.create(
        model=DEMO_MODEL_ID,
        messages=[{"role": "user", "content": f"Say hello to visitor {i}."}],
        max_tokens=16,
        stream=True,
    )
    first = 0.0
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - began
    return first


async def samples(api: openai.AsyncOpenAI, n: int) -> list[float]:
    out = []
    for i in range(n):
        out.append(await ttft(api, i))
        await asyncio.sleep(0.05)
    return out


async def with_batch(api: openai.AsyncOpenAI, n: int, lines: int) -> list[float]:
    rows = [
        {"custom_id": f"l{i}", "method": "POST", "url": "/v1/chat/completions", "body": line_body(i)}
        for i in range(lines)
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    upload = await api.files.create(file=("bench.jsonl", data), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until_batch(api, batch.id, lambda b: b.request_counts.completed >= 1)  # the batch is under way
    measured = await samples(api, n)
    state = await api.batches.retrieve(batch.id)
    if state.status != "in_progress":
        print(f"  (the batch ended during the samples: {state.status}; use more --lines)", flush=True)
    await api.batches.cancel(batch.id)
    await until_batch(api, batch.id, lambda b: b.status == "cancelled")
    return measured


async def until_batch(api: openai.AsyncOpenAI, batch_id: str, done: Callable[[Any], bool]) -> None:
    while True:
        batch = await api.batches.retrieve(batch_id)
        if done(batch):
            return
        await asyncio.sleep(0.05)


async def with_flood(api: openai.AsyncOpenAI, n: int, lines: int) -> list[float]:
    queue = list(range(lines))
    stop = asyncio.Event()

    async def client() -> None:
        while queue and not stop.is_set():
            await api.chat.completions.create(**line_body(queue.pop()))

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await asyncio.sleep(0.5)
    measured = await samples(api, n)
    stop.set()
    await asyncio.gather(*clients, return_exceptions=True)
    return measured


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(url: str, args: argparse.Namespace) -> None:
    api = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=300)
    await samples(api, 3)  # warm-up
    results: dict[str, list[tuple[float, float]]] = {"idle": [], "batch": [], "flood": []}
    for round_ in range(args.rounds):
        for cell in ("idle", "batch", "flood"):
            if cell == "idle":
                measured = await samples(api, args.samples)
            elif cell == "batch":
                measured = await with_batch(api, args.samples, args.lines)
            else:
                measured = await with_flood(api, args.samples, args.lines)
            p50, p90 = quantile(measured, 0.5), quantile(measured, 0.9)
            results[cell].append((p50, p90))
            print(f"round {round_ + 1} {cell:>5}: TTFT p50 {p50 * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms", flush=True)
    idle50 = statistics.median(p for p, _ in results["idle"])
    idle90 = statistics.median(p for _, p in results["idle"])
    print(f"\nmedians over {args.rounds} rounds ({os.cpu_count()} cores):")
    for cell, pairs in results.items():
        p50 = statistics.median(p for p, _ in pairs)
        p90 = statistics.median(p for _, p in pairs)
        print(
            f"  {cell:>5}: p50 {p50 * 1000:7.1f} ms ({p50 / idle50:.2f}x idle)   "
            f"p90 {p90 * 1000:7.1f} ms ({p90 / idle90:.2f}x idle)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--lines", type=int, default=40)
    parser.add_argument("--models-dir", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="helexa-bench-") as tmp:
        port = free_port()
        env = {
            **os.environ,
            "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{port}",
            "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "HELEXA_NEURON__LISTEN": f"127.0.0.1:{free_port()}",
            "HELEXA_NEURON__STATE_DIR": str(Path(tmp) / "state"),
            "HELEXA_BATCHES__DIRECTORY": str(Path(tmp) / "batches"),
            "HELEXA_AUTH__API_KEYS": json.dumps([KEY]),
        }
        if args.models_dir:
            env["HELEXA_NEURON__MODEL_DIRS"] = json.dumps([args.models_dir])
        log = (Path(tmp) / "helexa.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "helexa", "run", "--role", "both"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            api = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=5)
            deadline = time.monotonic() + 300
            while True:  # the demo model loads at start (fetched from PyPI on the first run)
                try:
                    cards = {m.id: (m.model_extra or {}).get("status") for m in api.models.list().data}
                    if cards.get(DEMO_MODEL_ID) == "loaded":
                        break
                except openai.APIConnectionError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(
                        "helexa did not serve the demo model:\n" + (Path(tmp) / "helexa.log").read_text()[-3000:]
                    )
                time.sleep(0.5)
            asyncio.run(run(url, args))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


if __name__ == "__main__":
    main()
