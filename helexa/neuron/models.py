"""The neuron's model lifecycle: which models are loaded where, one load at a time per model.

``ModelManager`` owns one instance of every installed harness and a record per model. A load runs as its
own task, so concurrent callers (and callers that give up) share it: the first request starts it, the others
await the same task, and a caller that disconnects does not cancel it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from helexa.config import Config
from helexa.engine.credentials import EngineCredentials
from helexa.engine.harness import GpuState, Harness, HarnessContext, HarnessState, Inventory, PlacementPlan
from helexa.engine.ports import PortAllocator
from helexa.engine.process import EngineFailed, EngineLoad, ProcessHarness
from helexa.errors import Conflict, HelexaError, NotFound, PreflightError, UpstreamError
from helexa.modelfiles.hub import cache_dir
from helexa.neuron.gangs import Gangs, GangSettings
from helexa.neuron.gpus import host_info, read_health
from helexa.neuron.records import TRANSITIONS, InvalidTransition, ModelRecord, Observer, differences, other_member
from helexa.neuron.sources import Sources
from helexa.neuron.specs import Specs
from helexa.wire.neuron import Discovery, ModelInfo, ModelSpec, ModelStatus

__all__ = ["EngineError", "ModelManager"]

logger = logging.getLogger(__name__)
MAX_FAILED_RECORDS = 32  # failed loads of models outside the catalogue that /models keeps showing


class EngineError(HelexaError):
    """The engine could not be started or died (its log tail is in the message)."""

    status = 502
    code = "engine_failed"


class ModelManager:
    """Loads, unloads and tracks models through the installed harnesses."""

    def __init__(
        self, cfg: Config, harness_classes: dict[str, type[Harness]], observer: Observer | None = None
    ) -> None:
        neuron = cfg.neuron
        model_dirs = tuple(Path(d).expanduser() for d in neuron.model_dirs)
        hub_cache = cache_dir(neuron.hf_cache_dir)
        self.sources = Sources(hub_cache, model_dirs, downloads=neuron.downloads)
        first, last = neuron.port_range[0], neuron.port_range[1]
        #: every engine's secret by origin: the neuron's session to its engines sends them (its middleware)
        self.credentials = EngineCredentials()
        context = HarnessContext(
            port_range=(first, last),
            ports=PortAllocator(first, last),  # one for every harness: no port is handed out twice
            model_dirs=(*model_dirs, hub_cache),  # pulled models are read where huggingface_hub keeps them
            ready_timeout_s=neuron.ready_timeout_seconds,
            stop_timeout_s=neuron.stop_timeout_seconds,
            log_lines=neuron.log_lines,
            on_exit=self._engine_exited,
            advertise_address=neuron.advertise_address,
            rank_interface=neuron.rank_interface,
            credentials=self.credentials,
        )
        self.gangs = Gangs(
            GangSettings(
                multi_host=neuron.multi_host,
                advertise_address=neuron.advertise_address,
                gang_peers=tuple(neuron.gang_peers),
                rank_port_range=(neuron.rank_port_range[0], neuron.rank_port_range[1]),
            )
        )
        self.harnesses: dict[str, Harness] = {}
        for name, cls in harness_classes.items():
            try:
                self.harnesses[name] = cls(context)
            except Exception:  # one broken third-party harness must not take the neuron down
                logger.exception("harness %r failed to start; models that need it will be refused", name)
        self.discovery: Discovery | None = None
        self.specs = Specs(
            cfg.models,
            self.harnesses,
            {n: c for n, c in harness_classes.items() if n in self.harnesses},
            default_harness=neuron.default_harness,
            gpus=lambda: len(self.discovery.devices) if self.discovery is not None else 0,
        )
        self.catalogue = self.specs.catalogue
        self.records: dict[str, ModelRecord] = {}
        self.availability: dict[str, tuple[str, int, str]] = {}  # see helexa.neuron.reports.check_availability
        self._observer = observer or (lambda event, model_id, seconds: None)

    # ------------------------------------------------------------------------------------------ queries

    def get(self, model_id: str) -> ModelRecord | None:
        """The record of ``model_id`` (an id or catalogue alias)."""
        record = self.records.get(model_id)
        if record is None and model_id in self.catalogue:
            record = self.records.get(self.catalogue[model_id].id)
        return record

    async def list(self, session: aiohttp.ClientSession | None = None) -> list[ModelInfo]:
        """Every model with a record (with its engine's load when the harness reports one), then every
        catalogue model this neuron has not touched (unloaded)."""
        records = list(self.records.values())
        loads: list[EngineLoad | None] = [None] * len(records)
        if session is not None:
            loads = list(await asyncio.gather(*(self._engine_load(session, r) for r in records)))
        infos = [r.info() for r in records]
        for info, load in zip(infos, loads, strict=True):
            if load is not None:
                info.waiting, info.running, info.kv_cache_usage = load.waiting, load.running, load.kv_cache
        seen = set(self.records)
        for entry in self.catalogue.values():
            if entry.id in seen:
                continue
            seen.add(entry.id)
            spec = self.specs.complete(entry.spec())
            if spec.harness in self.harnesses:
                availability, size, kind = self.availability.get(entry.id, ("", 0, ""))
                infos.append(
                    ModelInfo(
                        id=entry.id,
                        harness=spec.harness,
                        availability=availability,
                        download_bytes=size,
                        unavailable_kind=kind,
                    )
                )
        return infos

    async def _engine_load(self, session: aiohttp.ClientSession, record: ModelRecord) -> EngineLoad | None:
        harness = self.harnesses.get(record.harness)
        if record.status != ModelStatus.LOADED or harness is None:
            return None
        if not record.context_length and record.endpoint:  # asked once the engine serves; kept while it runs
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
                record.context_length = await harness.context_length(session, record.endpoint)
        if not isinstance(harness, ProcessHarness):
            return None
        return await harness.engine_load(session, record.spec.model_id)

    async def inventory(self) -> Inventory:
        """This host's GPUs with their free memory now, and free RAM (NVML runs in a thread)."""
        devices = self.discovery.devices if self.discovery else []
        health = await asyncio.to_thread(read_health, len(devices))
        free = {h.index: h.vram_free_mb for h in health}
        gpus = tuple(GpuState(d.index, d.name, d.vram_total_mb, free.get(d.index, 0)) for d in devices)
        ram = (await asyncio.to_thread(host_info)).ram_available_mb
        return Inventory(gpus=gpus, ram_available_mb=ram)

    async def capacity(self) -> Inventory:
        """This host as if nothing were loaded: every GPU's whole memory free, all its RAM — what a model must
        fit to be servable here at all."""
        devices = self.discovery.devices if self.discovery else []
        gpus = tuple(GpuState(d.index, d.name, d.vram_total_mb, d.vram_total_mb) for d in devices)
        return Inventory(gpus=gpus, ram_available_mb=(await asyncio.to_thread(host_info)).ram_total_mb)

    # ------------------------------------------------------------------------------------------ lifecycle

    async def load(self, spec: ModelSpec) -> ModelRecord:
        """Load ``spec`` (completed from the catalogue) unless it is loaded already; share a load in progress.

        :raises PreflightError: refused before anything started (422).
        :raises EngineError: the engine did not come up (502).
        """
        spec = self.specs.complete(spec)
        record = self.records.get(spec.model_id)
        if record is not None and (conflict := other_member(record, spec)):
            raise Conflict(conflict, code="gang_conflict")
        if record is not None and record.task is not None and not record.task.done():
            changed = differences(record.spec, spec)
            if changed:
                raise Conflict(
                    f"model {spec.model_id!r} is being loaded with another {changed}; wait for that load, "
                    "or unload it first",
                    code="load_in_progress",
                )
            return await self._wait(record)
        if record is not None and record.status == ModelStatus.LOADED:
            return record
        if record is not None and record.status == ModelStatus.SLEEPING:
            if await self.harnesses[record.harness].wake(spec.model_id):
                self._move(record, ModelStatus.LOADED, loaded_at=time.time())
                logger.info("woke %s", spec.model_id)
                return record
            await self.harnesses[record.harness].unload(spec.model_id)  # could not wake: start afresh
        harness = self.specs.harness(spec.harness, spec.model_id)
        if spec.rank is not None or spec.hosts > 1:
            spec = self.gangs.admit(
                spec, harness=harness.name, multi_host_harness=harness.multi_host, versions=harness.versions()
            )
        record = ModelRecord(spec=spec, harness=harness.name, status=ModelStatus.LOADING)
        self.records[spec.model_id] = record
        record.task = asyncio.create_task(self._load(record, harness), name=f"load {spec.model_id}")
        return await self._wait(record)

    def _move(
        self, record: ModelRecord, to: ModelStatus, *, event: str = "", seconds: float = 0.0, **fields: Any
    ) -> None:
        """Change ``record``'s status to ``to`` (and ``fields`` with it) if :data:`TRANSITIONS` allows it, and emit
        the change's event (``event`` overrides the table's) to the observer. The only writer of a status.

        :raises InvalidTransition: the table has no such change.
        """
        allowed = TRANSITIONS[record.status]
        if to not in allowed:
            raise InvalidTransition(f"model {record.spec.model_id!r} cannot go from {record.status} to {to}")
        record.status = to
        if to in (ModelStatus.UNLOADED, ModelStatus.FAILED):
            self.gangs.release(record.spec.rank)  # a gang head's master port is free again
        for name, value in fields.items():
            setattr(record, name, value)
        if event := event or allowed[to]:
            self._observer(event, record.spec.model_id, seconds)

    @staticmethod
    async def _wait(record: ModelRecord) -> ModelRecord:
        """Wait for ``record``'s load; an unload that cancels it is a 409 to every waiter, not a dropped
        connection (a waiter that is itself cancelled — its client left — stays cancelled)."""
        assert record.task is not None
        try:
            return await asyncio.shield(record.task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise Conflict(
                f"the load of model {record.spec.model_id!r} was cancelled by an unload", code="load_cancelled"
            ) from None

    async def start_load(self, spec: ModelSpec) -> ModelRecord:
        """Begin a load without waiting for it (the answer of a ``wait = false`` request). A refusal that needs
        no I/O (a gang rank this neuron may not serve) is still raised here; a gang head's record carries its
        master port.

        :raises PreflightError: see :meth:`load`.
        """
        task = asyncio.create_task(self.load(spec))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # outcome is kept in the record
        await asyncio.sleep(0)  # load() runs to its first wait: the record exists, or the refusal is raised
        if task.done() and not task.cancelled() and isinstance(task.exception(), HelexaError):
            raise task.exception()  # type: ignore[misc]
        return self.records.get(self.specs.complete(spec).model_id) or ModelRecord(
            spec=spec, harness="", status=ModelStatus.LOADING
        )

    async def _load(self, record: ModelRecord, harness: Harness) -> ModelRecord:
        spec, began = record.spec, time.monotonic()
        if why := self.specs.auto_why.pop(spec.model_id, ""):
            logger.info("loading %s with %s", spec.model_id, why)
        try:
            spec = await self.sources.prepare(
                spec, harness, await self.inventory(), lambda p: self._move(record, ModelStatus.DOWNLOADING, pull=p)
            )
            self._move(record, ModelStatus.LOADING, pull=None)
            record.plan = await self._preflight(harness, spec)
            record.endpoint = await harness.load(spec, record.plan)
        except PreflightError as exc:
            logger.warning("load of %s refused: reason=%s %s", spec.model_id, exc.kind, exc.message)
            self._move(
                record, ModelStatus.UNLOADED, event="refused", seconds=time.monotonic() - began, last_error=exc.message
            )
            self._forget(record)  # the client got the reason; refused ad-hoc loads must not pile up
            raise
        except (EngineFailed, OSError, RuntimeError, UpstreamError) as exc:  # UpstreamError: a download failed
            self._move(record, ModelStatus.FAILED, seconds=time.monotonic() - began, last_error=str(exc))
            self._forget_old_failures()
            raise EngineError(f"model {spec.model_id!r} failed to load: {exc}") from None
        except asyncio.CancelledError:
            self._move(record, ModelStatus.UNLOADED, pull=None)
            with contextlib.suppress(Exception):
                await harness.unload(spec.model_id)
            raise
        except Exception as exc:  # a harness bug or an input it did not expect: never stay "loading"
            logger.exception("load of %s failed unexpectedly", spec.model_id)
            failure = f"{type(exc).__name__}: {exc}"
            self._move(record, ModelStatus.FAILED, seconds=time.monotonic() - began, last_error=failure)
            self._forget_old_failures()
            raise EngineError(f"model {spec.model_id!r} failed to load: {type(exc).__name__}: {exc}") from None
        seconds = time.monotonic() - began
        self._move(record, ModelStatus.LOADED, seconds=seconds, last_error="", loaded_at=time.time(), context_length=0)
        logger.info(
            "loaded %s with %s in %.1fs (engine at %s, served by this neuron)",
            spec.model_id,
            harness.name,
            seconds,
            record.endpoint,
        )
        return record

    async def _preflight(self, harness: Harness, spec: ModelSpec) -> PlacementPlan:
        """Preflight; under memory pressure, stop sleeping engines for real and try once more. A source the
        file system refuses (a name too long, a broken link) is a refusal, not an engine failure."""
        try:
            return await self._preflight_once(harness, spec)
        except OSError as exc:
            raise PreflightError(
                "source_missing",
                spec.model_id,
                f"source {spec.source[:200]!r} cannot be read: {exc.strerror or exc}",
                "name a model file or directory under the neuron's model_dirs",
            ) from None

    async def _preflight_once(self, harness: Harness, spec: ModelSpec) -> PlacementPlan:
        try:
            return await harness.preflight(spec, await self.inventory())
        except PreflightError as exc:
            sleeping = [r for r in self.records.values() if r.status == ModelStatus.SLEEPING]
            if exc.kind not in ("insufficient_vram", "insufficient_memory") or not sleeping:
                raise
        for other in sleeping:
            logger.info("memory pressure: stopping sleeping %s for real", other.spec.model_id)
            await self.unload(other.spec.model_id, stop=True)
        return await harness.preflight(spec, await self.inventory())

    async def unload(self, model_id: str, *, stop: bool = False) -> ModelRecord:
        """Stop ``model_id`` (cancelling a load in progress); a harness that can sleep puts it to sleep
        instead, unless ``stop``. :raises NotFound: the neuron has no such model."""
        record = self.get(model_id)
        if record is None:
            if model_id in self.catalogue:
                return ModelRecord(spec=self.specs.spec_for(model_id) or ModelSpec(model_id=model_id), harness="")
            raise NotFound(f"model {model_id!r} is not known to this neuron", code="model_not_found")
        if record.task is not None and not record.task.done():
            record.task.cancel()
            with contextlib.suppress(BaseException):
                await record.task
        harness = self.harnesses[record.harness]
        if not stop and record.status == ModelStatus.LOADED and await harness.sleep(record.spec.model_id):
            self._move(record, ModelStatus.SLEEPING)
            logger.info("put %s to sleep", record.spec.model_id)
            return record
        # shielded: a caller that leaves (its client timed out) must not leave an engine half-stopped
        await asyncio.shield(self._stop(record, harness))
        return record

    async def _stop(self, record: ModelRecord, harness: Harness) -> None:
        await harness.unload(record.spec.model_id)
        if record.status != ModelStatus.UNLOADED:
            self._move(record, ModelStatus.UNLOADED, endpoint="", loaded_at=0.0)
        logger.info("unloaded %s", record.spec.model_id)

    def _forget(self, record: ModelRecord) -> None:
        """Drop a record that is not running, unless it is a catalogue model (those stay listed)."""
        if record.spec.model_id not in self.catalogue and self.records.get(record.spec.model_id) is record:
            del self.records[record.spec.model_id]

    def _forget_old_failures(self) -> None:
        """Keep the newest :data:`MAX_FAILED_RECORDS` failed ad-hoc loads (``/models`` stays bounded)."""
        failed = [
            r for r in self.records.values() if r.status == ModelStatus.FAILED and r.spec.model_id not in self.catalogue
        ]
        for old in failed[: max(0, len(failed) - MAX_FAILED_RECORDS)]:
            del self.records[old.spec.model_id]

    def _engine_exited(self, model_id: str, reason: str) -> None:
        record = self.records.get(model_id)
        if record is None or record.status != ModelStatus.LOADED:
            return
        self._move(record, ModelStatus.FAILED, last_error=reason, endpoint="")

    async def refresh(self, record: ModelRecord) -> None:
        """Re-read the harness state of a loaded model (catches engines that stopped answering)."""
        if record.status == ModelStatus.LOADED:
            state = await self.harnesses[record.harness].state(record.spec.model_id)
            if state == HarnessState.FAILED:
                reason = self.harnesses[record.harness].last_error(record.spec.model_id)
                self._move(record, ModelStatus.FAILED, last_error=reason)

    @contextlib.asynccontextmanager
    async def serving(self, record: ModelRecord) -> AsyncIterator[None]:
        """Count one request in flight on ``record`` for its duration."""
        record.in_flight += 1
        try:
            yield
        finally:
            record.in_flight -= 1

    async def close(self) -> None:
        """Cancel loads and downloads in progress and stop every engine."""
        for record in self.records.values():
            if record.task is not None and not record.task.done():
                record.task.cancel()
        await self.sources.close()
        await asyncio.gather(*(h.close() for h in self.harnesses.values()), return_exceptions=True)
