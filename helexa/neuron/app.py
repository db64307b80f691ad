"""``make_neuron_app()``: the neuron's control API and OpenAI pass-through, with everything it owns.

Owned for the app's lifetime (``cleanup_ctx``): the discovery report (read once at start), the client session
to engines, the model manager with its engines (all stopped on shutdown), the preload task and the GPU gauge
refresher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from helexa.config import Config, parse_listen
from helexa.engine.harness import Harness
from helexa.errors import HelexaError
from helexa.neuron.gpus import discover, read_health
from helexa.neuron.metrics import NeuronMetrics
from helexa.neuron.models import ModelManager
from helexa.neuron.normaliser import Markers
from helexa.neuron.pull_routes import setup_pull_routes
from helexa.neuron.reports import check_availability, describe_default_harness, engine_versions
from helexa.neuron.routes import setup_routes
from helexa.neuron.state import (
    discovery_key,
    load_on_demand_key,
    manager_key,
    markers_key,
    max_answer_key,
    neuron_metrics_key,
    session_key,
    started_key,
)
from helexa.server.aio import wait_set
from helexa.server.app import base_app, cancel_all, registry_key
from helexa.server.auth import BearerGuard
from helexa.server.browser_guard import BrowserGuard, known_host_names
from helexa.server.version import VersionInfo

__all__ = ["make_neuron_app"]

logger = logging.getLogger(__name__)
_GPU_REFRESH_S = 5.0


_OPEN = frozenset({"/healthz", "/version", "/metrics"})


def _protected(request: web.Request) -> bool:
    """Everything needs the token (engine logs and model lists included) but liveness, version and metrics."""
    return request.path not in _OPEN


def make_neuron_app(cfg: Config, version: VersionInfo, harnesses: dict[str, type[Harness]]) -> web.Application:
    """Build the neuron app for ``cfg`` with the installed ``harnesses``."""
    listen_host, _ = parse_listen(cfg.neuron.listen)
    guards = [
        BrowserGuard(known_host_names([listen_host, *cfg.neuron.allowed_hosts])),
        BearerGuard([cfg.neuron.token], protected=_protected, what="neuron token"),
    ]
    app = base_app(role="neuron", version=version, max_body_bytes=cfg.server.max_body_mb * 1024 * 1024, guards=guards)
    metrics = NeuronMetrics(app[registry_key])
    app[neuron_metrics_key] = metrics

    def observe(event: str, model_id: str, seconds: float) -> None:
        record = app[manager_key].records.get(model_id)
        if event == "loaded":
            metrics.load_seconds.labels(model_id, record.harness if record else "").observe(seconds)
        if event == "crashed":
            metrics.engine_crashes.labels(model_id).inc()
        else:
            metrics.loads.labels(model_id, event).inc()

    app[manager_key] = ModelManager(cfg, harnesses, observer=observe)
    app[markers_key] = Markers(think=tuple(cfg.neuron.reasoning_markers), tool=tuple(cfg.neuron.tool_call_markers))  # type: ignore[arg-type]
    app[load_on_demand_key] = cfg.neuron.load_on_demand
    app[max_answer_key] = cfg.server.max_answer_mb * 1024 * 1024
    app[started_key] = time.monotonic()
    setup_routes(app)
    setup_pull_routes(app)
    app.cleanup_ctx.append(_discovery(sorted(harnesses), version.version))
    app.cleanup_ctx.append(_client_session)
    app.cleanup_ctx.append(_engines)
    app.cleanup_ctx.append(_background(cfg.neuron.preload))
    return app


def _discovery(harnesses: list[str], version: str):  # noqa: ANN202
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        app[discovery_key] = await asyncio.to_thread(discover, harnesses, version)
        manager = app[manager_key]
        manager.discovery = app[discovery_key]
        app[discovery_key].default_harness = describe_default_harness(manager)
        app[discovery_key].engines = await asyncio.to_thread(engine_versions, manager)
        app[discovery_key].multi_host = manager.gangs.settings.multi_host
        app[discovery_key].advertise_address = manager.gangs.settings.advertise_address
        logger.info("default harness: %s", app[discovery_key].default_harness)
        for device in app[discovery_key].devices:
            app[neuron_metrics_key].gpu_total(device.index, device.vram_total_mb)
        yield

    return ctx


async def _client_session(app: web.Application) -> AsyncIterator[None]:
    # Engines stream for minutes: no total timeout, but a connect timeout so a dead engine is noticed.
    timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10)
    # llama.cpp's and vLLM's servers drop idle keep-alive connections after 5 s: ours go well before (a request is
    # sent once: one written on a connection the engine closed meanwhile would be an error)
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2)
    # every request to an engine carries that engine's secret (helexa.engine.credentials), whoever sends it
    async with aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=False,
        middlewares=(app[manager_key].credentials.middleware,),
    ) as session:
        app[session_key] = session
        yield


async def _engines(app: web.Application) -> AsyncIterator[None]:
    yield
    logger.info("stopping engines")
    await app[manager_key].close()


def _background(preload: list[str]):  # noqa: ANN202
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        tasks = [
            asyncio.create_task(_preload(app, preload)),
            asyncio.create_task(_refresh_gpus(app)),
            asyncio.create_task(_check_availability(app)),
        ]
        yield
        await cancel_all(tasks)

    return ctx


async def _preload(app: web.Application, model_ids: list[str]) -> None:
    manager = app[manager_key]
    for model_id in model_ids:
        spec = manager.specs.spec_for(model_id)
        if spec is None:
            logger.error("preload: %r is not in the catalogue ([[models]]); skipping it", model_id)
            continue
        try:
            await manager.load(spec)
        except HelexaError as exc:
            logger.error("preload of %s failed: %s", model_id, exc.message)


AVAILABILITY_EVERY_S = 600.0


async def _check_availability(app: web.Application) -> None:
    """Which catalogue models could start here, need a download, or cannot run: at start, after every
    download, and every :data:`AVAILABILITY_EVERY_S` (each check of a hub source is one listing request)."""
    manager = app[manager_key]
    while True:
        manager.sources.pulls.changed.clear()
        try:
            await check_availability(manager)
        except Exception:  # a check must never stop the neuron; the next round tries again
            logger.exception("checking the catalogue's availability failed")
        await wait_set(manager.sources.pulls.changed, AVAILABILITY_EVERY_S)


async def _refresh_gpus(app: web.Application) -> None:
    metrics, count = app[neuron_metrics_key], len(app[discovery_key].devices)
    while count:
        for h in await asyncio.to_thread(read_health, count):
            metrics.gpu_reading(h.index, h.vram_used_mb, h.utilization_pct, h.temp_c)
        await asyncio.sleep(_GPU_REFRESH_S)
