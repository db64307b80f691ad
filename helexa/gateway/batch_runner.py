"""Running batches on the fleet's idle capacity, at ``batch`` priority, resumed after a restart.

One runner: the gateway process the store says may run (``may_run``) — the one holding ``runner.lock`` in the
batch directory (a gateway's workers share it), or, in a cluster, the leader. The others only serve the API.
It also deletes the files that expired, every :data:`SWEEP_S`.
It looks at the store every :data:`TICK_S` (and at once when a batch is created, cancelled or a line ends) and,
for each batch in progress, starts lines of a model while

- fewer than ``lines_per_replica`` times the replicas of that model run, and
- some replica of that model serves no other request now (other gateways' too, in a cluster) — so an
  interactive request waits behind at most ``lines_per_replica`` lines (a line already running is one
  request's worth), never behind a queue of them.

Batches whose model is loaded go first; for a model nobody serves, one line is sent, which waits in the
scheduler's queue at ``batch`` priority (a load that never evicts a model a higher priority uses). A batch names
one model (an OpenAI batch), or several (an Anthropic message batch may mix them: each line goes when its model has
room, looked for among the next :data:`LOOKAHEAD` lines without an answer).

A line goes through the same path as an HTTP request — routing, :class:`~helexa.gateway.forward.Forward`, metrics —
as a :class:`LineCall`, with its owner's key (limits, counters; ``priority = batch``). An answer is stored once
(:meth:`BatchStore.record`); a 429 or 5xx is tried again (:data:`ATTEMPTS` times, backing off) before it is
stored as the line's answer. A line running when the gateway stops is not stored, so the next runner runs it
again: each line is in the output exactly once, though its engine may have generated it twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web

from helexa.batches.contract import Batches
from helexa.batches.formats import MESSAGES, BatchLine, batch_models
from helexa.errors import HelexaError, PermissionDenied, UpstreamError
from helexa.gateway.anthropic_routes import answer_message
from helexa.gateway.forward import Forward, observe, reserve_tokens
from helexa.gateway.metrics import BatchMetrics
from helexa.gateway.neuron_client import error_from_response
from helexa.gateway.proxy import Exchange, Usage, prepare_body, usage_of
from helexa.gateway.queue import client_of
from helexa.gateway.registry import Registry
from helexa.gateway.rerank_routes import rank
from helexa.gateway.responses_routes import answer_response
from helexa.gateway.state import router_key
from helexa.server.aio import wait_set
from helexa.server.keys import Key, KeyGuard, key_usage_key, request_key_key
from helexa.server.limits import RateLimited
from helexa.server.middlewares import INPUT_ERRORS, error_body, input_error, request_id_key
from helexa.wire.openai import decode_head

__all__ = ["ATTEMPTS", "SWEEP_S", "TICK_S", "BatchRunner", "LineCall"]

logger = logging.getLogger(__name__)
TICK_S = 0.25  # how often the runner looks at the store and the fleet
SWEEP_S = 60.0  # how often it deletes the files that expired
LOOKAHEAD = 512  # lines of a batch of several models looked at at once for one whose model has room
ATTEMPTS = 4  # a line answered 429 or 5xx is sent this many times in all before that answer is kept
_AGAIN = frozenset({429, 500, 502, 503, 504})
_encoder = msgspec.json.Encoder()
_TRANSLATED = {MESSAGES: answer_message, "/v1/responses": answer_response}  # lines of another dialect than chat


class LineCall(dict):
    """A batch's line as :class:`~helexa.gateway.forward.Forward` sees a request: the app, the task it runs in,
    its request id, its owner's key at ``batch`` priority and that key's usage. ``neuron``: where it was routed;
    ``model``: the model it asks for."""

    __slots__ = ("app", "model", "neuron", "task")

    def __init__(self, app: web.Application, request_id: str, key: Key | None, usage: Any, model: str = "") -> None:
        super().__init__()
        self.app, self.task, self.neuron, self.model = app, asyncio.current_task(), "", model
        self[request_id_key] = request_id
        if key is not None:
            self[request_key_key] = dataclasses.replace(key, priority="batch")
            self[key_usage_key] = usage


async def execute(call: LineCall, endpoint: str, raw: bytes) -> tuple[int, bytes, Usage | None]:
    """Send one line's ``raw`` body to ``endpoint`` as ``call``: ``(status, JSON answer, usage)``. Every failure
    is an answer too (helexa's error envelope with its status — Anthropic's for a message batch), as the HTTP
    route would have given it."""
    try:
        if endpoint in _TRANSLATED:
            answer, usage = await _TRANSLATED[endpoint](call, raw)
            return 200, _encoder.encode(answer), usage
        if endpoint == "/v1/rerank":
            answer = await rank(call, raw)
            usage = answer["usage"]
            return 200, _encoder.encode(answer), Usage(prompt_tokens=usage["prompt_tokens"])
        head = decode_head(raw, endpoint)
        await reserve_tokens(call, len(raw), head.max_completion_tokens or head.max_tokens)
        router = call.app[router_key]
        model_id, state = await router.route(head.model, None, client_of(call))
        call.neuron = state.name
        body, _ = prepare_body(raw, head.model, model_id, stream=False, wants_usage=False)
        exchange = Exchange(started=time.perf_counter())
        async with Forward(call, model_id, state, path=endpoint, body=body, exchange=exchange) as (up, state):
            data = await up.read()
            if up.content_type != "application/json":
                if up.status >= 400:
                    raise error_from_response(up.label, up.status, data)
                raise UpstreamError(f"{up.label} answered with {up.content_type[:60]!r}, not JSON")
            if up.status == 200:
                exchange.usage = usage_of(data)
        observe(call, model_id, state.name, exchange)
        return up.status, data, exchange.usage
    except (HelexaError, *INPUT_ERRORS) as exc:  # a line's body that breaks a decoder is a 400, as over HTTP
        err = exc if isinstance(exc, HelexaError) else input_error(exc)
        return err.status, error_body(err, anthropic=endpoint == MESSAGES), None


@dataclasses.dataclass
class _Running:
    """What the runner holds of one batch: its models (resolved; several for a message batch that mixes them),
    the last line it started (lines after it are fetched next) and the lines running now."""

    models: tuple[str, ...]
    cursor: int = -1
    lines: dict[int, LineCall] = dataclasses.field(default_factory=dict)


class BatchRunner:
    """Runs the batches of ``store`` for ``app`` (see the module's docstring)."""

    def __init__(
        self,
        app: web.Application,
        store: Batches,
        metrics: BatchMetrics,
        *,
        lines_per_replica: int = 1,
        keys: KeyGuard | None = None,
    ) -> None:
        self.app, self.store, self.metrics, self.keys = app, store, metrics, keys
        self.lines_per_replica = lines_per_replica
        self.wake = asyncio.Event()
        self._batches: dict[str, _Running] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._swept = 0.0  # when expired files were last deleted (monotonic)

    @property
    def running(self) -> int:
        """Lines this runner runs now."""
        return sum(len(b.lines) for b in self._batches.values())

    async def run(self) -> None:
        """Until cancelled: run what the store holds (when this process holds the directory's lock); at the end,
        stop every line (not stored: the next runner runs them again)."""
        try:
            while True:
                if self.store.may_run():
                    try:
                        await self._tick()
                        await self._sweep()
                    except HelexaError as exc:  # the cluster's store away: the next round tries again
                        logger.warning("the batch runner could not look at its batches: %s", exc.message)
                    except Exception:  # a bad batch must not stop every other one
                        logger.exception("the batch runner failed a round; trying again")
                await wait_set(self.wake, TICK_S)
                self.wake.clear()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _sweep(self) -> None:
        """Delete the files that expired, every :data:`SWEEP_S` (the API stops showing them when they expire)."""
        if time.monotonic() - self._swept < SWEEP_S:
            return
        self._swept = time.monotonic()
        if gone := await self.store.expire_files(int(time.time())):
            logger.info("deleted %d expired files (%s%s)", len(gone), ", ".join(gone[:5]), ", …" * (len(gone) > 5))

    async def _tick(self) -> None:
        batches = await self.store.active()
        active = {b["id"] for b in batches}
        for gone in set(self._batches) - active:
            if not self._batches[gone].lines:
                del self._batches[gone]
        registry = self.app[router_key].registry
        # batches whose models are loaded first
        batches.sort(key=lambda b: not any(registry.replicas(registry.resolve(m)) for m in batch_models(b["model"])))
        now, pending = time.time(), 0
        for batch in batches:
            running = self._batches.get(batch["id"])
            if running is None:
                models = tuple(registry.resolve(m) for m in batch_models(batch["model"]))
                running = self._batches[batch["id"]] = _Running(models)
            status = batch["status"]
            if status == "in_progress" and now >= batch["expires_at"]:
                logger.info("batch %s expired with %d lines not run", batch["id"], _left(batch))
                status = "expiring"
            if status in ("cancelling", "expiring"):
                if not running.lines:
                    await self._end(batch, "cancelled" if status == "cancelling" else "expired")
                continue
            if status == "finalizing":  # a runner stopped while it wrote the files
                await self._end(batch, "completed")
                continue
            if status != "in_progress":
                continue
            pending += _left(batch) - len(running.lines)
            await self._start_lines(batch, running, registry)
        self.metrics.pending.set(max(0, pending))

    async def _start_lines(self, batch: dict[str, Any], running: _Running, registry: Registry) -> None:
        if not _left(batch):
            if not running.lines and await self.store.move(batch["id"], "finalizing", ("in_progress",)):
                await self._end(batch, "completed")
            return
        on = Counter(call.neuron for b in self._batches.values() for call in b.lines.values())
        room = {model: n for model in running.models if (n := self._room(model, registry, on)) > 0}
        if not room:
            return
        if len(running.models) == 1:
            model = running.models[0]
            fetched = await self.store.pending(batch["id"], running.cursor, room[model])
            lines = [(line, model) for line in fetched if line.index not in running.lines]
            if not lines and not running.lines:
                running.cursor = -1  # lines before the cursor without an answer (none, but for a stopped task): again
        else:  # several models: each line goes when its model has room (the cursor is not used)
            lines = []
            for line in await self.store.pending(batch["id"], -1, LOOKAHEAD):
                model = registry.resolve(_line_model(line)) if line.index not in running.lines else ""
                if room.get(model, 0) > 0:
                    room[model] -= 1
                    lines.append((line, model))
        key = self._key(batch)
        for line, model in lines:
            running.cursor = max(running.cursor, line.index)
            running.lines[line.index] = LineCall(self.app, "", None, None, model)  # counted from now; routed soon
            task = asyncio.create_task(self._line(batch, line, key, running), name=f"batch line {line.index}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.metrics.running.set(self.running)

    def _room(self, model: str, registry: Registry, on: Counter[str]) -> int:
        """How many more lines of ``model`` may start now (``on``: this runner's lines on each neuron): up to
        ``lines_per_replica`` per replica, and only while some replica serves nothing but this runner's lines
        (other gateways' requests too, as they publish them in a cluster); a model nobody serves: one line, which
        waits its turn in the scheduler's queue."""
        replicas = registry.replicas(model)
        mine = sum(1 for b in self._batches.values() for call in b.lines.values() if call.model == model)
        free = max(1, len(replicas)) * self.lines_per_replica - mine
        idle = not replicas or any(
            sum(r.in_flight.values()) + sum(r.peer_in_flight.values()) - on[r.name] <= 0 for r in replicas
        )
        return free if idle else 0

    def _key(self, batch: dict[str, Any]) -> Key | None:
        """The key the batch's lines go with: its owner's (``None`` without keys)."""
        if self.keys is None or not batch["owner"]:
            return None
        return self.keys.key_named(batch["owner"])

    async def _line(self, batch: dict[str, Any], line: BatchLine, key: Key | None, running: _Running) -> None:
        request_id = f"{batch['id']}-{line.index}"
        try:
            if self.keys is not None and batch["owner"] and key is None:
                status, answer, usage = 403, _revoked(batch["owner"]), None
            else:
                try:
                    status, answer, usage = await self._attempts(batch, line, key, request_id, running)
                except Exception:  # a bug, not the line's: its answer says so, once (never run again and again)
                    logger.exception("batch %s line %d failed (request id %s)", batch["id"], line.index, request_id)
                    err = HelexaError(f"internal error; the helexa log has the details under request id {request_id}")
                    status, answer, usage = err.status, error_body(err, anthropic=batch["endpoint"] == MESSAGES), None
            tokens = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
            try:
                stored = await self.store.record(
                    batch["id"], line.index, status=status, request_id=request_id, result=answer, tokens=tokens
                )
            except HelexaError as exc:  # not stored: the line runs again once the store answers
                logger.warning("batch %s line %d: its answer could not be stored (%s)", batch["id"], line.index, exc)
                return  # (the batch's lines are read again from its start once none is left after the cursor)
            if stored:
                result = "completed" if 200 <= status < 300 else "failed"
                self.metrics.lines.labels(running.lines[line.index].model, result).inc()
        finally:
            running.lines.pop(line.index, None)
            self.metrics.running.set(self.running)
            self.wake.set()

    async def _attempts(
        self, batch: dict[str, Any], line: BatchLine, key: Key | None, request_id: str, running: _Running
    ) -> tuple[int, bytes, Usage | None]:
        """The line's answer, asked up to :data:`ATTEMPTS` times while it is a 429 or 5xx (a key's own limit is
        waited out, not counted)."""
        attempt = 0
        while True:
            usage, release = None, None
            if key is not None and self.keys is not None:
                try:
                    usage, release = await self.keys.admit_on_behalf(key)
                except RateLimited as err:
                    await asyncio.sleep(float(err.headers.get("Retry-After", "1")))
                    continue
            call = LineCall(self.app, request_id, key, usage, running.lines[line.index].model)
            running.lines[line.index] = call
            try:
                status, answer, used = await execute(call, batch["endpoint"], line.body)
            finally:
                if release is not None:
                    release()
            attempt += 1
            if status not in _AGAIN or attempt >= ATTEMPTS:
                return status, answer, used
            self.metrics.lines.labels(call.model, "retried").inc()
            await asyncio.sleep(min(30.0, 2.0**attempt))

    async def _end(self, batch: dict[str, Any], final: str) -> None:
        done = await self.store.finish(batch["id"], final)
        self._batches.pop(batch["id"], None)
        self.metrics.batches.labels(final).inc()
        if final == "expired":
            self.metrics.lines.labels(batch["model"] or "", "expired").inc(_left(done))
        logger.info(
            "batch %s %s: %d completed, %d failed of %d",
            batch["id"],
            final,
            done["completed"],
            done["failed"],
            done["total"],
        )


class _Model(msgspec.Struct):
    model: str = ""


_model_decoder = msgspec.json.Decoder(_Model)


def _line_model(line: BatchLine) -> str:
    """The model a line's body asks for (checked when its batch was created)."""
    try:
        return _model_decoder.decode(line.body).model
    except (msgspec.DecodeError, RecursionError):
        return ""


def _left(batch: dict[str, Any]) -> int:
    """Lines of ``batch`` with no answer stored."""
    return batch["total"] - batch["completed"] - batch["failed"]


def _revoked(owner: str) -> bytes:
    return error_body(PermissionDenied(f"the key {owner!r} that created this batch is no longer configured"))
