"""Opening a request to a model's neuron: failover before any byte, in-flight accounting, request metrics.

Every route that sends inference to a neuron — plain OpenAI relays and translated dialects alike — goes
through :class:`Forward`, so routing, retries and metrics behave the same for all of them. So does a batch's
line (:mod:`helexa.gateway.batch_runner`): what Forward needs of a request is a :class:`Caller`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from aiohttp import web

from helexa.errors import HelexaError, UpstreamError
from helexa.gateway.affinity import Conversation
from helexa.gateway.proxy import Exchange
from helexa.gateway.queue import client_of
from helexa.gateway.registry import InvalidMove, NeuronState
from helexa.gateway.state import first_byte_timeout_key, gateway_metrics_key, router_key, upstreams_key
from helexa.server.h1client import Upstream, UpstreamResponse
from helexa.server.keys import key_usage_key
from helexa.server.middlewares import ORIGIN_HEADER, REQUEST_ID_HEADER, request_id_key

if TYPE_CHECKING:
    from helexa.gateway.metrics import GatewayMetrics
    from helexa.gateway.routing import Router

__all__ = ["Caller", "Forward", "observe", "reserve_tokens"]


class Caller(Protocol):
    """What sends inference through :class:`Forward`: a ``web.Request``, or a batch's line. Its app; the task it
    runs in; and, by key, its request id (``request_id_key``), its key (``request_key_key``: the client's name
    and priority) and that key's usage (``key_usage_key``), the last two absent without keys."""

    @property
    def app(self) -> web.Application: ...

    @property
    def task(self) -> asyncio.Task[Any] | None: ...

    def __getitem__(self, key: Any) -> Any: ...

    def get(self, key: Any, default: Any = None) -> Any: ...


async def reserve_tokens(request: Caller, prompt_bytes: int, max_tokens: int | None) -> None:
    """Reserve what the request may use of its key's tokens per hour (no-op without a limited key); settled when
    it ends. Called before the request waits or is sent.

    :raises RateLimited: it does not fit in what is left of the hour.
    """
    usage = request.get(key_usage_key)
    if usage is not None:
        await usage.reserve(prompt_bytes, max_tokens)


class Forward:
    """POST ``body`` to ``path`` on a neuron serving ``model_id``; the block gets the open response and the neuron.

    A neuron that cannot be reached (or does not begin to answer in time) becomes suspect — checked by the poller
    at once, marked down only if that poll fails too — and another replica is tried, as long as nothing has been
    sent to the client; so is one whose neuron no longer holds the model (see :meth:`_open`). The request counts
    as in flight on that neuron until the block exits. The neuron that answers is remembered for ``conversation``
    (prefix affinity). A class rather than an ``asynccontextmanager``: it runs on every request and costs a third
    as much.

    :raises UpstreamError: (on entering) no replica could be reached.
    """

    __slots__ = (
        "_conversation",
        "_priority",
        "_series",
        "_upstream",
        "body",
        "exchange",
        "model_id",
        "path",
        "request",
        "state",
    )

    def __init__(
        self,
        request: Caller,
        model_id: str,
        state: NeuronState,
        *,
        path: str,
        body: bytes,
        exchange: Exchange,
        conversation: Conversation | None = None,
    ) -> None:
        self.request, self.model_id, self.state, self.path, self.body = request, model_id, state, path, body
        self.exchange, self._conversation = exchange, conversation

    async def __aenter__(self) -> tuple[UpstreamResponse, NeuronState]:
        router, metrics = self.request.app[router_key], self.request.app[gateway_metrics_key]
        self._flight(1)  # in flight from the moment it is routed: the scheduler never evicts a model opening here
        try:
            upstream = await self._open(router, metrics)
        except BaseException as exc:
            self._flight(-1)
            key_usage = self.request.get(key_usage_key)
            if isinstance(exc, asyncio.CancelledError) and key_usage is not None:
                # the client left while the neuron generated (a whole answer's head comes at its end): the
                # request was sent, so it is charged what it reserved — hanging up never makes one free
                key_usage.tokens += key_usage.estimate
            raise
        model_id, state = self.model_id, self.state
        router.remember(model_id, self._conversation, state.name)
        self._upstream = upstream
        self._priority = priority = client_of(self.request).priority
        router.queue.began(state, model_id, priority)
        self._series = series = metrics.series(model_id, state.name)
        series.in_flight.inc()
        self.exchange.status = upstream.status
        state.aborts.add(upstream.close)  # a neuron marked down closes the connection: the relay ends at once
        return upstream, state

    def _flight(self, change: int) -> None:
        in_flight = self.state.in_flight
        in_flight[self.model_id] = in_flight.get(self.model_id, 0) + change

    def _switch(self, other: NeuronState) -> None:
        self._flight(-1)
        self.state = other
        self._flight(1)

    async def _open(self, router: Router, metrics: GatewayMetrics) -> UpstreamResponse:
        """The first answer's head from a replica (``self.state`` and ``self.model_id`` are where it came from).

        A replica that cannot be reached is suspect; the next is tried. A replica whose neuron answers that it does
        not hold the model (this gateway's view was older than the neuron's last change: a poll apart, or the
        leader's eviction seen by a follower) is taken off the view; the next is tried, or the model is routed
        again (a cold load if need be) — once: a known model does not become a 404 on a stale view.
        """
        app = self.request.app
        headers = {REQUEST_ID_HEADER: self.request[request_id_key]}  # the rest: the neuron's Upstream adds them
        tried: set[str] = set()
        rerouted = False
        while True:
            state, model_id = self.state, self.model_id
            try:
                upstream = await _open_watched(
                    state,
                    app[upstreams_key][state.name],
                    self.path,
                    self.body,
                    headers,
                    first_byte_timeout=app[first_byte_timeout_key],
                    task=self.request.task,
                )
            except UpstreamError as exc:
                metrics.errors.labels(model_id, state.name, exc.code).inc()
                state.suspected(exc.message)  # one request's word: checked now, not taken out for everyone
                tried.add(state.name)
                other = router.choose(model_id, frozenset(tried))
                if other is None:
                    raise
                self._switch(other)
                continue
            if not await _model_gone(upstream):
                return upstream
            metrics.errors.labels(model_id, state.name, "model_gone").inc()
            with contextlib.suppress(InvalidMove):
                state.move(model_id, None)
            tried.add(state.name)
            other = router.choose(model_id, frozenset(tried))
            if other is None and rerouted:
                return upstream  # the neuron's 404 is relayed: nowhere has it, even after routing again
            upstream.release()
            if other is not None:
                self._switch(other)
                continue
            rerouted = True
            self._flight(-1)
            try:
                self.model_id, self.state = await router.route(model_id, self._conversation, client_of(self.request))
            finally:
                self._flight(1)  # on the replica routed to (or, when routing failed, the one it left)
            tried.clear()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        try:
            self._upstream.release()
        finally:
            self._done(exc)

    def _done(self, exc: BaseException | None) -> None:
        state, model_id, upstream = self.state, self.model_id, self._upstream
        if isinstance(exc, HelexaError):
            self.request.app[gateway_metrics_key].errors.labels(model_id, state.name, exc.code).inc()
        state.aborts.discard(upstream.close)
        key_usage = self.request.get(key_usage_key)
        if key_usage is not None:  # here, not in observe(): a request the client cuts counts too
            key_usage.tokens += self.exchange.tokens_used(len(self.body))
        series = self._series
        series.in_flight.dec()
        state.in_flight[model_id] -= 1
        self.request.app[router_key].queue.ended(state, model_id, self._priority)
        series.request(self.exchange.status)


async def _open_watched(
    state: NeuronState,
    upstream: Upstream,
    path: str,
    body: bytes,
    headers: dict[str, str],
    *,
    first_byte_timeout: float = 0.0,
    task: asyncio.Task[None] | None = None,
) -> UpstreamResponse:
    """``upstream.post(path, body, headers)``, given up at once when the poller marks the neuron down meanwhile,
    or when it has not begun to answer within ``first_byte_timeout`` seconds (0: no limit). ``task`` is the one
    the caller runs in (the handler's; found when not given).

    The abort cancels this task and is told apart from any other cancellation by its flag (cheaper on the hot
    path than an ``asyncio.timeout`` block).

    :raises UpstreamError: unreachable, or marked down before it answered.
    """
    task = task or asyncio.current_task()  # the handler's task, which the caller runs in (cheaper to pass)
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
        return await upstream.post(path, body, headers)
    except asyncio.CancelledError:
        if not aborted or task is None or task.uncancel() > 0:
            raise
        raise UpstreamError(aborted) from None
    finally:
        state.aborts.discard(abort)
        if timer is not None:
            timer.cancel()


async def _model_gone(upstream: UpstreamResponse) -> bool:
    """Whether ``upstream`` is the neuron's own 404 for a model it does not hold (its body kept for the client)."""
    if upstream.status != 404 or upstream.headers.get(ORIGIN_HEADER) != "neuron":
        return False
    try:
        answer = _gone_decoder.decode(await upstream.peek())
    except (msgspec.DecodeError, UpstreamError):
        return False
    return answer.error.code == "model_not_found"


class _Error(msgspec.Struct):
    code: str | None = None


class _ErrorAnswer(msgspec.Struct):
    error: _Error


_gone_decoder = msgspec.json.Decoder(_ErrorAnswer)


def observe(request: Caller, model: str, neuron: str, exchange: Exchange) -> None:
    """Record a finished request's latency, first-token time and tokens (a key's tokens are counted by
    :class:`Forward` when its block exits, whichever way it exits)."""
    series = request.app[gateway_metrics_key].series(model, neuron)
    series.duration.observe(time.perf_counter() - exchange.started)
    if exchange.first_token_s:
        series.ttft.observe(exchange.first_token_s)
    usage = exchange.usage
    if usage is None:
        return
    series.prompt_tokens.inc(usage.prompt_tokens)
    series.completion_tokens.inc(usage.completion_tokens)
    if exchange.generation_s > 0 and usage.completion_tokens > 1:
        series.tokens_per_second.observe((usage.completion_tokens - 1) / exchange.generation_s)
