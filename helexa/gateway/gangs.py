"""Acting on gangs: one model over several neurons, loaded, stopped and failed as one unit.

The engine's own multi-node runtime (vLLM) does the distributed work; the gateway places the ranks (the one
placer, :func:`helexa.gateway.scheduling.decide`, through :func:`helexa.gateway.placement.place_gang`), and this
module starts them and watches them — on the members it is given, after the lifecycle evicted what the plan said:

1. **Load** (all or nothing): wake the gang sleeping on exactly those members, if there is one; else unload what is
   left of earlier gangs of the model; start the head (rank 0) without waiting — its neuron reserves the
   torch.distributed port and answers with it and its engine versions — then every follower with them (their
   neurons refuse a version mismatch); wait for the head to serve, watching the followers meanwhile. Any refusal
   or failure stops every member, and the error names the member and its reason.
2. **Unload**: through the head first. Where the head's engine can sleep (vLLM's sleep mode), the whole gang
   sleeps through it and the followers are marked asleep; a load wakes it. Otherwise every member stops.
3. **Failure**: after each poll, a gang that is neither complete nor asleep nor being loaded or unloaded —
   a member failed, vanished, or its neuron stopped answering — has its other members stopped, so no head is left
   answering ``/health`` while its requests hang. The next request loads the gang again, possibly elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec

from helexa.config import ModelEntry
from helexa.errors import HelexaError, PreflightError
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.neuron_client import NeuronClient
from helexa.gateway.registry import Gang, NeuronState, Registry
from helexa.wire.neuron import LoadRequest, ModelStatus, RankSpec

__all__ = ["GangKeeper"]

logger = logging.getLogger(__name__)
WATCH_EVERY_S = 1.0  # how often a gang load in progress checks its followers
STOP_LIMIT_S = 120.0  # how long a member's neuron may take to stop its rank (an engine may ignore SIGTERM)


class GangKeeper:
    """Loads (on members it is given), wakes, unloads and reaps the gangs of the catalogue's ``hosts > 1``
    models. It decides nothing about placement and calls nothing of the lifecycle that drives it."""

    def __init__(
        self,
        registry: Registry,
        clients: dict[str, NeuronClient],
        metrics: GatewayMetrics,
        *,
        load_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry, self.clients, self.metrics = registry, clients, metrics
        self.load_timeout, self.clock = load_timeout, clock
        self._busy: set[str] = set()  # models with a gang load or unload in progress (not reaped meanwhile)
        self._reaping = False

    # ------------------------------------------------------------------------------------------ load

    async def load(self, entry: ModelEntry, members: tuple[str, ...]) -> None:
        """Serve ``entry`` as a gang on ``members`` (rank order, the head first): wake its gang sleeping on exactly
        them, else start a new one there (what is left of earlier gangs of the model is stopped first). The
        caller holds the members' locks and has evicted what the plan said.

        :raises HelexaError: a member refused or failed (every member is stopped; the error names it).
        """
        self._busy.add(entry.id)
        try:
            for gang in self.registry.gangs(entry.id):
                if gang.sleeping and tuple(m.neuron.name for m in gang.members) == members and await self._wake(gang):
                    return
            await self._stop_all(entry.id, reason="a new gang replaces it")
            await self._start(entry, members)
        finally:
            self._busy.discard(entry.id)

    async def _start(self, entry: ModelEntry, names: tuple[str, ...]) -> None:
        """Start a rank on each of ``names``; on any refusal or failure stop them all and raise, naming the member."""
        gang_id = secrets.token_hex(6)
        peers = [self._address(name) for name in names]
        head_rank = RankSpec(gang=gang_id, rank=0, size=len(names), peers=peers)
        logger.info("loading %s as gang %s on %s (head %s)", entry.id, gang_id, ", ".join(names), names[0])
        for rank, name in enumerate(names):
            self._mark(
                self.registry.neurons[name],
                entry,
                ModelStatus.LOADING,
                RankSpec(gang=gang_id, rank=rank, size=len(names)),
            )
        try:
            started = await self._member(
                names[0], 0, self.clients[names[0]].load(_request(entry, head_rank, wait=False), 60)
            )
            rank0 = started.rank
            if rank0 is None or not rank0.master_port:
                raise HelexaError(f"neuron {names[0]!r} did not report the gang's master port", status_override=502)
            await asyncio.gather(
                *(
                    self._member(
                        name,
                        rank,
                        self.clients[name].load(
                            _request(entry, msgspec.structs.replace(rank0, rank=rank)), self.load_timeout
                        ),
                    )
                    for rank, name in enumerate(names)
                    if rank
                )
            )
            head = asyncio.ensure_future(
                self._member(names[0], 0, self.clients[names[0]].load(_request(entry, rank0), self.load_timeout))
            )
            watch = asyncio.ensure_future(self._watch_followers(entry.id, gang_id, names))
            try:
                done, _ = await asyncio.wait({head, watch}, return_when=asyncio.FIRST_COMPLETED)
                if watch in done:
                    watch.result()  # raises the follower's failure
                head.result()
            finally:
                for task in (head, watch):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        except BaseException:
            await self._stop(entry.id, names)
            raise
        now = time.time()
        for rank, name in enumerate(names):
            state = self.registry.neurons[name]
            rank_spec = msgspec.structs.replace(rank0, rank=rank)
            self._mark(state, entry, ModelStatus.LOADED, rank_spec, loaded_at=now)
            state.last_used[entry.id] = self.clock()
            state.cycles += 1

    async def _member(self, name: str, rank: int, call: Awaitable[object]) -> object:
        """``call``'s answer; a refusal or failure re-raised as the gang's, naming the member."""
        try:
            return await call
        except PreflightError as exc:
            raise PreflightError(
                exc.kind, exc.model_id, f"neuron {name!r} (rank {rank}) refused: {exc.message}", exc.suggestion
            ) from None
        except HelexaError as exc:
            raise HelexaError(
                f"gang member neuron {name!r} (rank {rank}) failed: {exc.message}",
                code=exc.code,
                status_override=exc.status,
            ) from None

    async def _watch_followers(self, model_id: str, gang_id: str, names: tuple[str, ...]) -> None:
        """Return never; raise as soon as a follower's neuron reports its rank failed or gone."""
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            for rank, name in enumerate(names[1:], start=1):
                try:
                    models = {m.id: m for m in await self.clients[name].models()}
                except HelexaError as exc:
                    raise HelexaError(
                        f"gang member neuron {name!r} (rank {rank}) stopped answering: {exc.message}",
                        code="gang_member_failed",
                        status_override=502,
                    ) from None
                info = models.get(model_id)
                if info is None or info.rank is None or info.rank.gang != gang_id or info.status != ModelStatus.LOADED:
                    why = info.last_error if info is not None and info.last_error else "its rank is gone"
                    raise HelexaError(
                        f"gang member neuron {name!r} (rank {rank}) failed while the head started: {why}",
                        code="gang_member_failed",
                        status_override=502,
                    )

    async def _wake(self, gang: Gang) -> bool:
        """Wake a sleeping gang: the followers first (nothing to do there), then the head, which wakes them all."""
        order = [*gang.members[1:], gang.members[0]]
        entry = self.registry.catalogue[gang.model_id]
        try:
            for member in order:
                await self.clients[member.neuron.name].load(_request(entry, member.rank), self.load_timeout)
        except HelexaError as exc:
            logger.warning("gang %s of %s did not wake (%s); loading it afresh", gang.gang, gang.model_id, exc.message)
            return False
        for member in gang.members:
            self._mark(member.neuron, entry, ModelStatus.LOADED, member.rank, loaded_at=time.time())
            member.neuron.last_used[gang.model_id] = self.clock()
        logger.info("woke gang %s of %s through its head on %s", gang.gang, gang.model_id, order[-1].neuron.name)
        return True

    # ------------------------------------------------------------------------------------------ unload, reap

    async def unload(self, model_id: str, gang_id: str, *, stop: bool) -> None:
        """Unload one gang: put it to sleep through its head where the engine can, else stop every member."""
        gang = self.registry.gang(model_id, gang_id)
        if not stop and gang.sleeping:
            return  # asleep already (an unload of every holder reaches each member)
        names = tuple(m.neuron.name for m in gang.members)
        self._busy.add(model_id)
        try:
            head = gang.head
            if not stop and head is not None and head.neuron.healthy:
                answer = await self.clients[head.neuron.name].unload(model_id)
                if answer.status == ModelStatus.SLEEPING:
                    for member in gang.members[1:]:
                        await self.clients[member.neuron.name].unload(model_id)
                    for member in gang.members:
                        member.neuron.move(model_id, ModelStatus.SLEEPING)
                    logger.info("gang %s of %s sleeps (through its head on %s)", gang_id, model_id, head.neuron.name)
                    return
            await self._stop(model_id, names)
        finally:
            self._busy.discard(model_id)

    async def _stop(self, model_id: str, names: tuple[str, ...] | list[str]) -> None:
        """Stop ``model_id`` for real (no sleep) on every healthy neuron of ``names`` at once; errors are logged."""

        async def one(name: str) -> None:
            state = self.registry.neurons[name]
            if state.healthy:
                try:
                    await self.clients[name].unload(model_id, stop=True, limit_s=STOP_LIMIT_S)
                except HelexaError as exc:
                    logger.warning("could not stop %s's rank on %s: %s", model_id, name, exc.message)
            state.move(model_id, None)

        await asyncio.gather(*(one(name) for name in names))

    async def _stop_all(self, model_id: str, *, reason: str) -> None:
        for gang in self.registry.gangs(model_id):
            logger.info("stopping gang %s of %s: %s", gang.gang, model_id, reason)
            await self._stop(model_id, [m.neuron.name for m in gang.members])

    def broken(self) -> list[Gang]:
        """Gangs to stop now: neither complete, nor asleep, nor being loaded or unloaded."""
        out = []
        for entry in self.registry.entries:
            if entry.id in self._busy:
                continue
            out += [g for g in self.registry.gangs(entry.id) if not g.complete and not g.sleeping]
        return out

    def reap_soon(self) -> None:
        """Start a :meth:`reap` unless one runs (the poller calls it after each poll; cheap when nothing broke)."""
        if not self._reaping and self.broken():
            self._reaping = True
            task = asyncio.get_running_loop().create_task(self.reap(), name="reap gangs")
            task.add_done_callback(lambda t: setattr(self, "_reaping", False))

    async def reap(self) -> list[str]:
        """Stop the surviving members of every broken gang; return ``model/gang`` of those stopped."""
        stopped = []
        for gang in self.broken():
            culprit = _culprit(gang)
            logger.warning(
                "gang %s of %s failed (%s): stopping its other members", gang.gang, gang.model_id, culprit[1]
            )
            self.metrics.gang_failures.labels(gang.model_id, culprit[0]).inc()
            await self._stop(gang.model_id, [m.neuron.name for m in gang.members])
            stopped.append(f"{gang.model_id}/{gang.gang}")
        return stopped

    # ------------------------------------------------------------------------------------------ helpers

    def _address(self, name: str) -> str:
        discovery = self.registry.neurons[name].discovery
        return discovery.advertise_address if discovery is not None else ""

    @staticmethod
    def _mark(
        state: NeuronState, entry: ModelEntry, status: ModelStatus, rank: RankSpec, loaded_at: float = 0.0
    ) -> None:
        state.move(entry.id, status, harness=entry.harness, rank=rank, loaded_at=loaded_at)


def _request(entry: ModelEntry, rank: RankSpec, *, wait: bool = True) -> LoadRequest:
    """The load request of one member: the catalogue's spec with its rank."""
    return LoadRequest(**msgspec.structs.asdict(msgspec.structs.replace(entry.spec(), rank=rank)), wait=wait)


def _culprit(gang: Gang) -> tuple[str, str]:
    """``(neuron, why)`` of the first member that broke ``gang``."""
    for member in gang.members:
        if not member.neuron.healthy:
            return member.neuron.name, f"neuron {member.neuron.name} stopped answering"
        if member.info.status == ModelStatus.FAILED:
            why = member.info.last_error.splitlines()[0] if member.info.last_error else "its engine failed"
            return member.neuron.name, f"rank {member.rank.rank} on {member.neuron.name}: {why}"
    present = {m.rank.rank for m in gang.members}
    missing = min(set(range(gang.size)) - present, default=-1)
    return "", f"rank {missing} is gone" if missing >= 0 else "its members disagree"
