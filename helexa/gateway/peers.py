"""This gateway's part in a cluster, as its scheduler sees it: what it tells the other gateways, what it knows of
them. Several gateways serve one fleet; one of them — the leader (:mod:`helexa.cluster.lease`) — places every
load, eviction and idle unload; every gateway admits its own requests.

- **Followers** publish the requests they have waiting (model, priority, key, age, preferred replica) and the use
  they make of each model (requests in flight, last use); they read the leader's plan — the replicas that take
  no new requests (draining or being unloaded: ``held``) and the models being loaded — and its verdicts (a model
  refused or whose load failed: their waiters get the same error).
- **The leader** gathers the others' waiting requests into its policy's input, their use into its registry (so it
  never evicts or idles out a model another gateway uses), and publishes its plan and verdicts.

Everything is refreshed on events from the store's channel and once a beat, into plain fields the scheduler reads
synchronously. While the store does not answer, nothing is exchanged: the scheduler serves loaded models only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from helexa.cluster.exchange import Exchange
from helexa.cluster.lease import Leadership
from helexa.cluster.store import BEAT_S, ClusterStore, StoreUnavailable, redact
from helexa.errors import HelexaError, PreflightError
from helexa.gateway.registry import Registry
from helexa.gateway.scheduling import Waiter

__all__ = ["Peers"]

logger = logging.getLogger(__name__)
PLAN_TTL_BEATS = 5  # the leader's plan expires this many beats after it was last written
VERDICT_TTL_S = 30.0  # how long a verdict is kept for waiters to read
_SEP = "\x1f"  # between a neuron's and a model's name in a use record's field


class _Need(msgspec.Struct, array_like=True):
    ticket: int
    model: str
    age: float
    priority: int
    key: str
    preferred: str


class _Use(msgspec.Struct, array_like=True):
    in_flight: int
    age: float  # seconds since its last use


class _Plan(msgspec.Struct):
    held: list[tuple[str, str]] = []
    loading: list[str] = []
    leader: str = ""


class _Verdict(msgspec.Struct):
    seq: int
    status: int
    code: str
    message: str
    kind: str = ""
    model_id: str = ""
    suggestion: str = ""
    retry_after: str = ""


class _Coalesced:
    """``work`` run soon after :meth:`trigger`, once however often it is triggered meanwhile (again after it ran,
    if triggered while it ran)."""

    def __init__(self, work: Callable[[], Awaitable[None]]) -> None:
        self.work = work
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def trigger(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            with contextlib.suppress(StoreUnavailable):
                await self.work()
            if not self._again:
                return

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Peers:
    """The cluster of ``store`` for this gateway's scheduler (see the module's docstring).

    ``on_change()`` is called when something the scheduler reads changed (the plan, the others' waiting requests,
    a verdict, leadership, the store's availability).
    """

    def __init__(
        self,
        store: ClusterStore,
        leadership: Leadership,
        registry: Registry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.leadership, self.registry, self.clock = store, leadership, registry, clock
        self.exchange = Exchange(store)
        self.on_change: Callable[[], None] = lambda: None
        # what the scheduler reads
        self.others_waiting: tuple[Waiter, ...] = ()  # the leader's: the other gateways' waiting requests
        self.held: frozenset[tuple[str, str]] = frozenset()  # a follower's: replicas the leader holds back
        self.loading: frozenset[str] = frozenset()  # a follower's: models the leader is loading
        self.verdicts: dict[str, tuple[int, float, HelexaError]] = {}  # model -> (seq, seen at, error)
        self._primed = False  # verdicts found at the first read are older than this gateway's waiters
        self._mine: tuple[Waiter, ...] = ()
        self._plan: tuple[frozenset[tuple[str, str]], frozenset[str]] = (frozenset(), frozenset())
        self._numbers: dict[tuple[str, int], int] = {}  # (gateway, its ticket) -> the number it has here
        self._next = itertools.count(start=-1, step=-1)  # others' tickets are negative: never one of ours
        self._seq = itertools.count(start=int(time.time() * 1000))  # verdicts' numbers: newer ones are larger
        self._publish_needs = _Coalesced(self._put_needs)
        self._publish_plan = _Coalesced(self._put_plan)
        leadership.on_change.append(lambda leading: self._changed())
        store.on_change.append(lambda up: self._changed())

    @property
    def leading(self) -> bool:
        """This gateway places loads (it holds the lease)."""
        return self.leadership.leading

    @property
    def up(self) -> bool:
        """The store answers."""
        return self.store.up

    @property
    def placing(self) -> bool:
        """This gateway places loads now: it leads, and the store answers (without it, nobody does: the others
        could not hear of the plan)."""
        return self.leadership.leading and self.store.up

    def _changed(self) -> None:
        self.on_change()

    def report(self) -> dict[str, Any]:
        """What ``/fleet`` and the fleet page show of the cluster (never the store's password)."""
        return {
            "store": redact(self.store.url),
            "store_up": self.store.up,
            "store_error": self.store.error,
            "gateway": self.store.name,
            "gateways": list(self.store.peers),
            "leader": self.leadership.leader,
            "leading": self.leading,
            "epoch": self.leadership.epoch,
        }

    # -------------------------------------------------------------------------------------- what this one says

    def waiting(self, waiters: Iterable[Waiter]) -> None:
        """This gateway's waiting requests changed (published soon, once)."""
        mine = tuple(waiters)
        if mine != self._mine:
            self._mine = mine
            self._publish_needs.trigger()

    async def _put_needs(self) -> None:
        now = self.clock()
        records = {
            str(w.ticket): msgspec.msgpack.encode(
                _Need(w.ticket, w.model, max(0.0, now - w.arrived), w.priority, w.key, w.preferred)
            )
            for w in self._mine
        }
        await self.exchange.put_mine("needs", records)
        await self.exchange.send("needs")

    def plan(self, held: frozenset[tuple[str, str]], loading: Iterable[str]) -> None:
        """The leader's plan changed: the replicas it holds back, the models it is loading (published soon)."""
        plan = (held, frozenset(loading))
        if plan != self._plan:
            self._plan = plan
            self._publish_plan.trigger()

    async def _put_plan(self) -> None:
        held, loading = self._plan
        plan = _Plan(sorted(held), sorted(loading), self.store.name)
        await self.exchange.put("plan", msgspec.json.encode(plan), BEAT_S * PLAN_TTL_BEATS)
        await self.exchange.send("plan")

    def verdict(self, model: str, error: HelexaError) -> None:
        """The leader's word on ``model``: its waiters, wherever they wait, get ``error``."""
        extra: dict[str, Any] = {}
        if isinstance(error, PreflightError):
            extra = {"kind": error.kind, "model_id": error.model_id, "suggestion": error.suggestion}
        verdict = _Verdict(
            next(self._seq),
            error.status,
            error.code,
            error.message,
            retry_after=error.headers.get("Retry-After", ""),
            **extra,
        )
        asyncio.get_running_loop().create_task(self._put_verdict(model, msgspec.json.encode(verdict)))

    async def _put_verdict(self, model: str, verdict: bytes) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self.exchange.note("verdicts", model, verdict, VERDICT_TTL_S)
            await self.exchange.send("verdict")

    def fleet_changed(self) -> None:
        """A model was loaded or unloaded through this gateway: the others look at their neurons at once rather
        than at their next poll (a stale view would route to a replica that is gone)."""
        asyncio.get_running_loop().create_task(self.exchange.send("changed"))

    # -------------------------------------------------------------------------------------- what the others say

    async def refresh(self) -> None:
        """Read what the scheduler needs now: as leader, the others' waiting requests and use; as a follower, the
        leader's plan and verdicts. :raises StoreUnavailable: the store does not answer."""
        if self.placing:
            await self._read_needs()
            await self._read_use()
            self.held, self.loading = frozenset(), frozenset()
        else:
            self.others_waiting = ()
            await self._read_plan()
            await self._read_verdicts()
        self._changed()

    async def _read_needs(self) -> None:
        now, found, numbers = self.clock(), [], {}
        for gateway, records in (await self.exchange.gather("needs")).items():
            for raw in records.values():
                try:
                    need = msgspec.msgpack.decode(raw, type=_Need)
                except msgspec.DecodeError:
                    continue
                number = self._numbers.get((gateway, need.ticket)) or next(self._next)
                numbers[(gateway, need.ticket)] = number
                found.append(Waiter(number, need.model, now - need.age, need.priority, need.key, need.preferred))
        self._numbers = numbers
        self.others_waiting = tuple(found)

    async def _read_use(self) -> None:
        now = self.clock()
        in_flight: dict[tuple[str, str], int] = {}
        for records in (await self.exchange.gather("use")).values():
            for field, raw in records.items():
                neuron, _, model = field.partition(_SEP)
                state = self.registry.neurons.get(neuron)
                if state is None:
                    continue
                try:
                    use = msgspec.msgpack.decode(raw, type=_Use)
                except msgspec.DecodeError:
                    continue
                in_flight[(neuron, model)] = in_flight.get((neuron, model), 0) + use.in_flight
                last = now - use.age
                if model in state.models and last > state.last_used.get(model, 0.0):
                    state.last_used[model] = last  # another gateway used it more recently: not idle, not LRU
        for state in self.registry.neurons.values():
            state.peer_in_flight = {m: n for (neuron, m), n in in_flight.items() if neuron == state.name}

    async def _read_plan(self) -> None:
        raw = await self.exchange.get("plan")
        plan = _Plan()
        if raw is not None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                plan = msgspec.json.decode(raw, type=_Plan)
        self.held = frozenset((n, m) for n, m in plan.held)
        self.loading = frozenset(plan.loading)

    async def _read_verdicts(self) -> None:
        now = self.clock() if self._primed else float("-inf")  # (one found at the first read applies to nobody)
        self._primed = True
        for model, raw in (await self.exchange.notes("verdicts")).items():
            try:
                verdict = msgspec.json.decode(raw, type=_Verdict)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            known = self.verdicts.get(model)
            if known is None or verdict.seq > known[0]:
                self.verdicts[model] = (verdict.seq, now, _error(verdict))

    async def _put_use(self) -> None:
        now, records = self.clock(), {}
        for state in self.registry.neurons.values():
            for model, last in state.last_used.items():
                use = _Use(state.in_flight.get(model, 0), max(0.0, now - last))
                records[f"{state.name}{_SEP}{model}"] = msgspec.msgpack.encode(use)
        await self.exchange.put_mine("use", records)

    # -------------------------------------------------------------------------------------- the loop

    def _heard(self, topic: str, sender: str) -> None:
        if sender == self.store.name:
            return
        if topic == "changed":
            for state in self.registry.neurons.values():
                state.probe.set()  # a load or an unload ended somewhere: look at the neurons now
        self._refresh_soon.trigger()

    async def _beat(self) -> None:
        """Say this gateway is alive, publish its use, read the others, keep its records from expiring."""
        await self.store.beat()
        await self._put_use()
        await self.refresh()
        if self.placing:
            self._publish_plan.trigger()  # kept alive (it expires), and a new leader's is written
        elif self._mine:
            self._publish_needs.trigger()  # kept alive: it expires with a gateway that stopped

    async def run(self) -> None:
        """Beat, lead or follow, exchange, until cancelled (the app's lifetime)."""
        self._refresh_soon = _Coalesced(self.refresh)
        listening = asyncio.create_task(self.exchange.listen(self._heard), name="cluster events")
        leading = asyncio.create_task(self.leadership.run(), name="cluster lease")
        try:
            while True:
                try:
                    await self._beat()
                except StoreUnavailable:
                    pass
                except Exception:  # a bug must not end the beat: the gateway would drop out of its cluster
                    logger.exception("the cluster beat failed")
                await asyncio.sleep(BEAT_S)
        finally:
            for task in (listening, leading):
                task.cancel()
            for task in (listening, leading):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._publish_needs.cancel()
            self._publish_plan.cancel()
            self._refresh_soon.cancel()
            with contextlib.suppress(StoreUnavailable):
                await self.exchange.put_mine("needs", {})
            await self.store.leave()


def _error(verdict: _Verdict) -> HelexaError:
    """The error a verdict carries, as the leader raised it."""
    if verdict.kind:
        return PreflightError(verdict.kind, verdict.model_id, verdict.message, verdict.suggestion)
    headers = {"Retry-After": verdict.retry_after} if verdict.retry_after else None
    return HelexaError(verdict.message, code=verdict.code, status_override=verdict.status, headers=headers)
