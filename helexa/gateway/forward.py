"""Opening a request to a model's neuron: failover before any byte, in-flight accounting, request metrics.

Every route that sends inference to a neuron — plain OpenAI relays and translated dialects alike — goes
through :func:`forward`, so routing, retries and metrics behave the same for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from helexa.errors import HelexaError, UpstreamError
from helexa.gateway.affinity import Conversation
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.proxy import Exchange
from helexa.gateway.registry import NeuronState
from helexa.metrics import GatewayMetrics
from helexa.server.keys import key_usage_key
from helexa.server.middlewares import REQUEST_ID_HEADER, request_id_key
from helexa.server.upstream import open_upstream

__all__ = ["first_byte_timeout_key", "forward", "gateway_metrics_key", "lifecycle_key", "observe", "session_key"]

lifecycle_key = web.AppKey("lifecycle_key", Lifecycle)
session_key = web.AppKey("session_key", aiohttp.ClientSession)
gateway_metrics_key = web.AppKey("gateway_metrics_key", GatewayMetrics)
first_byte_timeout_key = web.AppKey("first_byte_timeout_key", float)


@contextlib.asynccontextmanager
async def forward(
    request: web.Request,
    model_id: str,
    state: NeuronState,
    *,
    path: str,
    body: bytes,
    exchange: Exchange,
    conversation: Conversation | None = None,
) -> AsyncIterator[tuple[aiohttp.ClientResponse, NeuronState]]:
    """POST ``body`` to ``path`` on a neuron serving ``model_id``; yield the open response and the neuron.

    A neuron that cannot be reached is marked down and another replica is tried, as long as nothing has been
    sent to the client. The request counts as in flight on that neuron until the block exits. The neuron that
    answers is remembered for ``conversation`` (prefix affinity).

    :raises UpstreamError: no replica could be reached.
    """
    app = request.app
    lifecycle, metrics = app[lifecycle_key], app[gateway_metrics_key]
    tried: set[str] = set()
    while True:
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: request[request_id_key]}
        if state.ref.token:
            headers["Authorization"] = f"Bearer {state.ref.token}"
        try:
            url = state.ref.endpoint.rstrip("/") + path
            timeout = app[first_byte_timeout_key]
            upstream = await _open_watched(state, app[session_key], url, body, headers, first_byte_timeout=timeout)
            break
        except UpstreamError as exc:
            metrics.errors.labels(model_id, state.name, exc.code).inc()
            state.healthy = False  # the poller brings it back when it answers
            tried.add(state.name)
            other = lifecycle.choose(model_id, frozenset(tried))
            if other is None:
                raise
            state = other
    lifecycle.remember(model_id, conversation, state.name)
    series = metrics.series(model_id, state.name)
    state.in_flight[model_id] = state.in_flight.get(model_id, 0) + 1
    series.in_flight.inc()
    exchange.status = upstream.status
    state.aborts.add(upstream.close)  # a neuron marked down closes the connection: the relay ends at once
    try:
        async with upstream:
            yield upstream, state
    except HelexaError as exc:
        metrics.errors.labels(model_id, state.name, exc.code).inc()
        raise
    finally:
        state.aborts.discard(upstream.close)
        series.in_flight.dec()
        state.in_flight[model_id] -= 1
        state.last_used[model_id] = time.monotonic()
        series.request(exchange.status)


async def _open_watched(
    state: NeuronState,
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    first_byte_timeout: float = 0.0,
) -> aiohttp.ClientResponse:
    """:func:`open_upstream`, given up at once when the poller marks the neuron down meanwhile, or when it has
    not begun to answer within ``first_byte_timeout`` seconds (0: no limit).

    The abort cancels this task and is told apart from any other cancellation by its flag (cheaper on the hot
    path than an ``asyncio.timeout`` block).

    :raises UpstreamError: unreachable, or marked down before it answered.
    """
    task = asyncio.current_task()
    aborted = ""

    def abort(reason: str = "") -> None:
        nonlocal aborted
        aborted = reason or f"neuron {state.name} stopped answering: {state.last_error}"
        if task is not None:
            task.cancel()

    state.aborts.add(abort)
    timer = None
    if first_byte_timeout:
        reason = f"neuron {state.name} did not begin to answer within {first_byte_timeout:g}s"
        timer = asyncio.get_running_loop().call_later(first_byte_timeout, abort, reason)
    try:
        return await open_upstream(session, url, body, headers)
    except asyncio.CancelledError:
        if not aborted or task is None or task.uncancel() > 0:
            raise
        raise UpstreamError(aborted) from None
    finally:
        state.aborts.discard(abort)
        if timer is not None:
            timer.cancel()


def observe(request: web.Request, model: str, neuron: str, exchange: Exchange) -> None:
    """Record a finished request's latency, first-token time and tokens (for its key's limits too)."""
    series = request.app[gateway_metrics_key].series(model, neuron)
    series.duration.observe(time.perf_counter() - exchange.started)
    if exchange.first_token_s:
        series.ttft.observe(exchange.first_token_s)
    usage = exchange.usage
    if usage is None:
        return
    key_usage = request.get(key_usage_key)
    if key_usage is not None:
        key_usage.tokens += usage.prompt_tokens + usage.completion_tokens
    series.prompt_tokens.inc(usage.prompt_tokens)
    series.completion_tokens.inc(usage.completion_tokens)
    if exchange.generation_s > 0 and usage.completion_tokens > 1:
        series.tokens_per_second.observe((usage.completion_tokens - 1) / exchange.generation_s)
