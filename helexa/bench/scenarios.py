"""What ``helexa bench`` measures, over HTTP with one aiohttp session: streaming requests in the three API
dialects at a concurrency, and the cost of a model swap.

Per request: time to first token (first generated text), the gaps between text events (inter-token latency),
end-to-end latency and completion tokens (from the stream's usage). Per cell: p50/p95 of those, and tokens per
second after the first token. Figures are seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from helexa.bench.store import Result
from helexa.sse import EventFramer, event_data

__all__ = ["DIALECTS", "Control", "Sample", "control", "measure", "pull_cost", "swap_cost"]

PROMPT = "Write two short sentences about the sea."


@dataclass
class Sample:
    """One request's figures (``error`` set when it failed)."""

    ttft: float = 0.0
    latency: float = 0.0
    gaps: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    error: str = ""


def _chat(model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    return "/v1/chat/completions", body


def _anthropic(model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": PROMPT}], "stream": True}
    return "/v1/messages", body


def _responses(model: str, max_tokens: int) -> tuple[str, dict[str, Any]]:
    return "/v1/responses", {"model": model, "input": PROMPT, "max_output_tokens": max_tokens, "stream": True}


def _chat_event(data: dict[str, Any]) -> tuple[bool, int]:
    """(carries generated text, completion tokens when it reports usage)."""
    choices = data.get("choices") or []
    delta = choices[0].get("delta", {}) if choices else {}
    text = bool(delta.get("content") or delta.get("reasoning_content"))
    usage = data.get("usage") or {}
    return text, int(usage.get("completion_tokens") or 0)


def _anthropic_event(data: dict[str, Any]) -> tuple[bool, int]:
    if data.get("type") == "content_block_delta":
        return True, 0
    if data.get("type") == "message_delta":
        return False, int((data.get("usage") or {}).get("output_tokens") or 0)
    return False, 0


def _responses_event(data: dict[str, Any]) -> tuple[bool, int]:
    if data.get("type") in ("response.output_text.delta", "response.reasoning_summary_text.delta"):
        return True, 0
    if data.get("type") in ("response.completed", "response.incomplete"):
        return False, int(((data.get("response") or {}).get("usage") or {}).get("output_tokens") or 0)
    return False, 0


#: scenario name -> (request builder, event reader)
DIALECTS: dict[
    str, tuple[Callable[[str, int], tuple[str, dict[str, Any]]], Callable[[dict[str, Any]], tuple[bool, int]]]
] = {
    "chat": (_chat, _chat_event),
    "anthropic": (_anthropic, _anthropic_event),
    "responses": (_responses, _responses_event),
}


async def _one(session: aiohttp.ClientSession, url: str, scenario: str, model: str, max_tokens: int) -> Sample:
    build, read = DIALECTS[scenario]
    path, body = build(model, max_tokens)
    sample, began, last = Sample(), time.perf_counter(), 0.0
    try:
        async with session.post(url + path, json=body) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                return Sample(error=f"HTTP {resp.status}: {text}")
            framer = EventFramer()
            async for chunk in resp.content.iter_any():
                for event in framer.feed(chunk).split(b"\n\n"):
                    raw = event_data(event + b"\n\n") if event else None
                    if not raw or raw.strip() == b"[DONE]":
                        continue
                    data = json.loads(raw)
                    if "error" in data and not data.get("choices"):
                        return Sample(error=f"stream error: {json.dumps(data['error'])[:300]}")
                    text, tokens = read(data)
                    now = time.perf_counter()
                    if text:
                        if sample.ttft == 0.0:
                            sample.ttft = now - began
                        else:
                            sample.gaps.append(now - last)
                        last = now
                    sample.completion_tokens = tokens or sample.completion_tokens
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Sample(error=f"{type(exc).__name__}: {exc}"[:300])
    sample.latency = time.perf_counter() - began
    if sample.ttft == 0.0:
        sample.error = "the stream carried no generated text"
    return sample


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(
    session: aiohttp.ClientSession,
    url: str,
    *,
    model: str,
    scenario: str,
    concurrency: int,
    requests: int,
    max_tokens: int,
) -> Result:
    """Send ``requests`` streaming requests, ``concurrency`` at a time; the cell's figures."""
    queue = iter(range(requests))
    samples: list[Sample] = []

    async def worker() -> None:
        for _ in queue:
            samples.append(await _one(session, url, scenario, model, max_tokens))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    good = [s for s in samples if not s.error]
    if not good:
        return Result(model, scenario, concurrency, ok=False, error=samples[0].error, requests=len(samples))
    rates = [
        (s.completion_tokens - 1) / (s.latency - s.ttft) for s in good if s.completion_tokens > 1 and s.latency > s.ttft
    ]
    return Result(
        model,
        scenario,
        concurrency,
        ok=True,
        error=next((s.error for s in samples if s.error), ""),
        requests=len(samples),
        ttft_p50=_quantile([s.ttft for s in good], 0.5),
        ttft_p95=_quantile([s.ttft for s in good], 0.95),
        itl_p50=_quantile([g for s in good for g in s.gaps], 0.5),
        tokens_per_second=statistics.median(rates) if rates else None,
        latency_p50=_quantile([s.latency for s in good], 0.5),
        latency_p95=_quantile([s.latency for s in good], 0.95),
        completion_tokens=int(statistics.median(s.completion_tokens for s in good)),
    )


async def swap_cost(
    session: aiohttp.ClientSession,
    url: str,
    *,
    model: str,
    max_tokens: int,
    unload: Callable[[str], Awaitable[None]],
    status: Callable[[str], Awaitable[str]],
    other: str = "",
    card: Callable[[str], Awaitable[dict[str, Any]]] | None = None,
) -> Result:
    """The cost of a model swap, from the unload to the first token of the next request.

    Without ``other``: ``model`` is unloaded, then asked for — a cold load, or a wake where the engine put it to
    sleep (``detail`` says which, and for a model over several hosts, its gang: every rank up to the first token).
    With ``other``: ``other`` is made warm, then unloaded, and ``model`` (unloaded
    first, so cold) is asked for — eviction plus load, as an operator swapping two models sees it.
    """
    scenario = "evict" if other else "swap"
    try:
        if other:
            warm = await _one(session, url, "chat", other, 1)
            if warm.error:
                return Result(model, scenario, 1, ok=False, error=f"{other} did not answer: {warm.error}")
            await unload(model)
        began = time.perf_counter()
        await unload(other or model)
        state = await status(model)
    except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError) as exc:
        return Result(model, scenario, 1, ok=False, error=f"unload failed: {exc}"[:300])
    sample = await _one(session, url, "chat", model, max_tokens)
    if sample.error:
        return Result(model, scenario, 1, ok=False, error=sample.error, requests=1)
    detail = f"unload {other} + load {model}" if other else ("wake from sleep" if state == "sleeping" else "cold load")
    if card is not None:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            detail += _gang(await card(model))
    swap = time.perf_counter() - began - sample.latency + sample.ttft  # unload(s) + time to first token
    figures = {"ttft_p50": sample.ttft, "latency_p50": sample.latency, "swap_seconds": swap}
    return Result(model, scenario, 1, ok=True, requests=1, detail=detail, **figures)


def _gang(card: dict[str, Any]) -> str:
    """`` of a gang over N neurons (rank 0 on a, rank 1 on b)`` for a gang model's card, else ""."""
    members = [m for m in card.get("members") or [] if m.get("status") == "loaded"]
    if int(card.get("hosts") or 1) < 2 or not members:
        return ""
    ranks = ", ".join(f"rank {m['rank']} on {m['neuron']}" for m in members)
    return f" of a gang over {card['hosts']} neurons ({ranks})"


async def pull_cost(
    session: aiohttp.ClientSession,
    url: str,
    *,
    model: str,
    max_tokens: int,
    card: Callable[[str], Awaitable[dict[str, Any]]],
) -> Result | None:
    """Download + load + first token of a model whose files are not on the target yet (``None`` when they are:
    nothing to measure). The target's view of the model is read every 0.2 s meanwhile, so the figures split
    into the download (from the request until the status leaves ``downloading``) and the rest."""
    before = await card(model)
    if before.get("status") not in ("needs_download", "download") and before.get("availability") != "download":
        return None
    size = int(before.get("download_bytes") or 0)
    began = time.perf_counter()
    timeline: list[tuple[float, str]] = []  # (seconds since the request, status) at each change

    async def watch() -> None:
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                status = str((await card(model)).get("status"))
                if not timeline or timeline[-1][1] != status:
                    timeline.append((time.perf_counter() - began, status))
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch())
    try:
        sample = await _one(session, url, "chat", model, max_tokens)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    if sample.error:
        return Result(model, "pull", 1, ok=False, error=sample.error, requests=1)
    started = [t for t, status in timeline if status == "downloading"]
    ended = [t for t, status in timeline if started and t > started[0] and status != "downloading"]
    downloaded = min(ended[0] if ended else sample.ttft, sample.ttft)  # the download, from the request on
    rate = f" ({size / downloaded / 2**20:.1f} MiB/s)" if size and started and downloaded > 0 else ""
    rest = sample.ttft - downloaded
    detail = f"download {size / 2**20:.1f} MiB in {downloaded:.1f}s{rate} + load and first token {rest:.1f}s"
    figures = {"ttft_p50": sample.ttft, "latency_p50": sample.latency, "swap_seconds": sample.ttft}
    return Result(model, "pull", 1, ok=True, requests=1, detail=detail, **figures)


@dataclass(frozen=True)
class Control:
    """A target's admin side: unload a model, read its status, read its whole entry."""

    unload: Callable[[str], Awaitable[None]]
    status: Callable[[str], Awaitable[str]]
    card: Callable[[str], Awaitable[dict[str, Any]]]


def control(session: aiohttp.ClientSession, url: str, role: str) -> Control:
    """How to unload a model (gateway ``/admin``, neuron ``/models/unload``; 404 is fine) and read its entry
    (gateway ``/fleet`` cards, neuron ``/models``: ``status`` — ``sleeping``, ``download``, … — and
    ``download_bytes``) on the target, with an admin ``session``."""

    async def unload(model: str) -> None:
        if role == "neuron":
            request = session.post(f"{url}/models/unload", json={"model_id": model})
        else:
            request = session.post(f"{url}/admin/models/{quote(model, safe='')}/unload")
        async with request as resp:
            if resp.status not in (200, 404):
                raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")

    async def card(model: str) -> dict[str, Any]:
        async with session.get(f"{url}/models" if role == "neuron" else f"{url}/fleet") as resp:
            data = await resp.json()
        return next((m for m in data.get("models", []) if m.get("id") == model), {"status": "unloaded"})

    async def status(model: str) -> str:
        if role == "neuron":
            return str((await card(model)).get("status", "unloaded"))
        async with session.get(f"{url}/fleet") as resp:
            data = await resp.json()
        listed = [m for n in data["neurons"] for m in n["models"]]
        return next((str(m["status"]) for m in listed if m["id"] == model), "unloaded")

    return Control(unload, status, card)
