"""``make_gateway_app()``: the gateway's API application and everything it owns.

Owned for the app's lifetime (``cleanup_ctx``): one client session to the neurons (polls, loads), the relay's
keep-alive connections to each neuron (inference), one poller task per neuron, and — with ``[cluster] store`` —
the store's client and this gateway's part in the cluster (its beat, the lease, the exchange). The Prometheus
registry (``registry_key``) is served on the metrics port by ``metrics_app``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from helexa.__about__ import __version__
from helexa.batches.contract import Batches
from helexa.batches.shared import SharedBatchStore
from helexa.batches.store import BatchStore
from helexa.cluster.lease import Leadership
from helexa.cluster.limits import SharedLimits
from helexa.cluster.sessions import SharedSessions
from helexa.cluster.store import ClusterStore, gateway_name
from helexa.config import Config, parse_listen
from helexa.errors import ConfigError
from helexa.gateway.admin import make_admin_app
from helexa.gateway.anthropic_routes import setup_anthropic_routes
from helexa.gateway.batch_routes import batch_runner_key, batch_store_key, batches_config_key, setup_batch_routes
from helexa.gateway.batch_runner import BatchRunner
from helexa.gateway.file_routes import UPLOAD_PATH, setup_file_routes
from helexa.gateway.keepalive import KeepAlives
from helexa.gateway.lifecycle import Lifecycle
from helexa.gateway.message_batch_routes import CREATE_PATH as MESSAGE_BATCHES_PATH
from helexa.gateway.message_batch_routes import setup_message_batch_routes
from helexa.gateway.metrics import BatchMetrics, ClusterGauges, GangMembers, GatewayMetrics
from helexa.gateway.neuron_client import NeuronClient
from helexa.gateway.peers import Peers
from helexa.gateway.poller import poll_forever
from helexa.gateway.queue import Scheduler
from helexa.gateway.registry import NeuronState, Registry
from helexa.gateway.rerank_routes import setup_rerank_routes
from helexa.gateway.responses_routes import setup_responses_routes
from helexa.gateway.routes import setup_routes
from helexa.gateway.routing import Router
from helexa.gateway.scheduling import Policy
from helexa.gateway.signins import SignIns
from helexa.gateway.state import (
    first_byte_timeout_key,
    gateway_metrics_key,
    keepalives_key,
    lifecycle_key,
    peers_key,
    router_key,
    ui_app_key,
    upstreams_key,
)
from helexa.gateway.ui import make_ui_app
from helexa.server.app import base_app, cancel_all, registry_key
from helexa.server.browser_guard import BrowserGuard, known_host_names
from helexa.server.h1client import Upstream
from helexa.server.keys import KeyGuard, KeyRing
from helexa.server.middlewares import POLLER_AGENT_PREFIX, Guard
from helexa.server.version import VersionInfo
from helexa.wire.neuron import PLACER_HEADER

__all__ = ["make_gateway_app"]


def _scope(request: web.Request) -> str | None:
    """The key scope a route of the API needs (``None``: open). ``/admin`` and ``/ui`` are sub-applications
    with guards of their own."""
    path = request.path
    if path.startswith(("/v1/", "/v2/")) or path == "/rerank":
        return "inference"
    return "any" if path.startswith("/fleet") else None


def make_gateway_app(cfg: Config, version: VersionInfo) -> web.Application:
    """Build the gateway API app for ``cfg``."""
    prometheus = CollectorRegistry()
    listen_host, _ = parse_listen(cfg.gateway.listen)
    guards: list[Guard] = [
        BrowserGuard(
            known_host_names([listen_host, *cfg.gateway.allowed_hosts]),
            form_prefix="/ui/",
            upload_paths=(UPLOAD_PATH,),
        )
    ]
    admin_guards: list[Guard] = []
    store = None
    if cfg.cluster.store:
        store = ClusterStore(
            cfg.cluster.store,
            prefix=cfg.cluster.prefix,
            name=gateway_name(cfg.cluster.name),
            expected=cfg.cluster.gateways,
        )
    keys = None
    if (ring := KeyRing.from_config(cfg.auth)).keys:
        keys = KeyGuard(ring, prometheus, scope_of=_scope, shared=SharedLimits(store) if store else None)
        guards.append(keys)
        admin_guards.append(keys.scoped("admin"))
    app = base_app(
        role="gateway",
        version=version,
        max_body_bytes=cfg.server.max_body_mb * 1024 * 1024,
        registry=prometheus,
        serve_metrics=False,
        guards=guards,
        body_limits={
            UPLOAD_PATH: cfg.batches.max_file_mb * 1024 * 1024 + FORM_OVERHEAD,
            MESSAGE_BATCHES_PATH: cfg.batches.max_file_mb * 1024 * 1024,
        },
    )
    sessions = SignIns(SharedSessions(store) if store else None)
    app[ui_app_key] = ui = make_ui_app(ring, bench_db=cfg.gateway.bench_db, sessions=sessions)
    app.add_subapp("/ui", ui)
    app.add_subapp("/admin", make_admin_app(admin_guards))
    metrics = GatewayMetrics(app[registry_key])
    app[gateway_metrics_key] = metrics
    app[keepalives_key] = keepalives = KeepAlives(cfg.gateway.keepalive_seconds)
    app.on_cleanup.append(lambda app: _close(keepalives))
    app[first_byte_timeout_key] = cfg.gateway.first_byte_timeout_seconds
    registry = Registry(cfg.neurons, cfg.models)
    app[registry_key].register(GangMembers(registry))  # gangs and their members, read at each scrape
    if store is not None:
        app[peers_key] = peers = Peers(store, Leadership(store, cfg.cluster.lease_seconds), registry)
        app[registry_key].register(ClusterGauges(peers.report))
        app.cleanup_ctx.append(_in_background("cluster", peers.run, peers.store.close))
    app.cleanup_ctx.append(_session_and_pollers(cfg, registry, metrics))
    app[batch_store_key] = batches = _batch_store(cfg, app.get(peers_key))
    app[batches_config_key] = cfg.batches
    runner = BatchRunner(
        app,
        batches,
        BatchMetrics(app[registry_key]),
        lines_per_replica=cfg.batches.lines_per_replica,
        keys=keys,
    )
    app[batch_runner_key] = runner
    # after the pollers' context: the router exists when the runner runs
    app.cleanup_ctx.append(_in_background("batches", runner.run, batches.close))
    setup_routes(app)
    setup_anthropic_routes(app)
    setup_responses_routes(app)
    setup_rerank_routes(app)
    setup_file_routes(app)
    setup_batch_routes(app)
    setup_message_batch_routes(app)
    return app


def _batch_store(cfg: Config, peers: Peers | None) -> Batches:
    """Where files and batches live: the cluster's store when there is one (every gateway serves the same ones;
    the leader runs them), else SQLite in ``[batches] directory`` (its workers share it; one runs them)."""
    if peers is None:
        return BatchStore(cfg.batches.directory)
    spool = Path(cfg.batches.directory).expanduser() / "spool"  # uploads, until they are in the store
    return SharedBatchStore(peers.store, spool, lambda: peers.placing)


FORM_OVERHEAD = 64 * 1024  # what a multipart form adds to the file it carries, at most


def _in_background(name: str, run: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]]):  # noqa: ANN202
    """A cleanup context: ``run()`` as a task for the app's lifetime; at the end, the task cancelled, then
    ``close()``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name=name)
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close()

    return ctx


async def _close(keepalives: KeepAlives) -> None:
    keepalives.close()


def _session_and_pollers(cfg: Config, registry: Registry, metrics: GatewayMetrics):  # noqa: ANN202
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        # Streams last minutes: no total timeout; connecting to a neuron must be quick.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
        agent = {"User-Agent": f"{POLLER_AGENT_PREFIX}/{__version__}"}  # the neurons log its polls at DEBUG
        max_answer = cfg.server.max_answer_mb * 1024 * 1024
        app[upstreams_key] = upstreams = _relay_clients(registry, agent, max_answer)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=connector, auto_decompress=False, headers=agent
        ) as session:
            clients = {
                name: NeuronClient(session, state.ref, cfg.gateway.neuron_timeout_seconds, max_answer=max_answer)
                for name, state in registry.neurons.items()
            }
            peers = app.get(peers_key)
            app[lifecycle_key] = Lifecycle(
                registry,
                clients,
                metrics,
                full_stop_after_unloads=cfg.eviction.full_stop_after_unloads,
                load_timeout=cfg.gateway.load_timeout_seconds,
                drain_grace=DRAIN_GRACE_S if peers is not None else 0.0,
            )
            lifecycle = app[lifecycle_key]
            if peers is not None:
                lifecycle.on_change.append(peers.fleet_changed)
            queue = Scheduler(
                registry,
                lifecycle,
                metrics,
                policy=Policy(
                    mode=cfg.scheduler.policy,
                    max_wait=cfg.scheduler.max_queue_wait_seconds,
                    hold=cfg.scheduler.priority_hold_seconds,
                    strategy=cfg.eviction.strategy,
                ),
                queue_limit=cfg.gateway.load_queue_limit,
                load_timeout=cfg.gateway.load_timeout_seconds,
                idle_seconds=cfg.eviction.idle_unload_seconds,
                peers=peers,
            )
            app[router_key] = Router(registry, lifecycle, queue, affinity=cfg.gateway.prefix_affinity)

            def on_poll(state: NeuronState) -> None:
                registry.mark_polled(state)
                metrics.neuron_up.labels(state.name).set(1 if state.healthy else 0)
                lifecycle.gangs.reap_soon()  # a member failed or vanished: stop the rest of its gang
                queue.polled()  # the policy runs again on the fresh numbers; idle models are unloaded

            tasks = [
                asyncio.create_task(
                    poll_forever(state, clients[name], cfg.gateway.poll_interval_seconds, on_poll),
                    name=f"poll {name}",
                )
                for name, state in registry.neurons.items()
            ]
            yield
            queue.close()
            await cancel_all(tasks)
            for upstream in upstreams.values():
                upstream.close()

    return ctx


DRAIN_GRACE_S = 0.25  # in a cluster, how long an eviction waits for the other gateways to hear of it


def _relay_clients(registry: Registry, agent: dict[str, str], max_answer: int) -> dict[str, Upstream]:
    """The relay's client to each neuron (inference goes there; polls and loads take the aiohttp session).

    :raises ConfigError: a neuron's token cannot be sent in a header (not ASCII on one line).
    """
    clients = {}
    for name, state in registry.neurons.items():
        headers = {**agent, PLACER_HEADER: "gateway"}  # the neuron loads nothing on demand for it: it places
        if state.ref.token:
            headers["Authorization"] = f"Bearer {state.ref.token}"
        try:
            clients[name] = Upstream(
                state.ref.endpoint, headers, label=f"neuron {name}", idle_seconds=30, max_body=max_answer
            )
        except ValueError as exc:
            raise ConfigError(f"neuron {name!r}: {exc}") from None
    return clients
