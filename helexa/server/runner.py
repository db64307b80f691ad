"""Serve one or more aiohttp Applications in one event loop, each on its own port, and drain on signals.

Shutdown: the first SIGTERM or SIGINT stops every listener at once (new connections are refused), then all
apps drain concurrently: in-flight requests get up to the grace period to finish; at its end, every stream
still open gets its API's final error event ("the server is shutting down") and every handler is cancelled;
cleanup contexts (engine processes, client sessions) then get at most :data:`CLEANUP_S` more, so the process
exits within grace + 2 s. A second signal during the drain skips the rest of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from helexa.errors import Overloaded
from helexa.server.middlewares import AccessLogger, active_key, end_requests
from helexa.server.sdnotify import notify

__all__ = ["CLEANUP_S", "Listener", "run", "serve"]

logger = logging.getLogger(__name__)
CLEANUP_S = 1.5  # what cleanup (engines stopped, sessions closed) may take after the grace period


@dataclass(frozen=True, slots=True)
class Listener:
    """One app on one address. ``name`` is for log lines (``gateway``, ``gateway metrics``, ``neuron``);
    ``reuse_port``: other processes listen on the same port (``SO_REUSEPORT``: the kernel spreads connections)."""

    name: str
    app: web.Application
    host: str
    port: int
    reuse_port: bool = False


async def serve(
    listeners: Sequence[Listener],
    *,
    grace: float,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[dict[str, int]], None] | None = None,
    handle_signals: bool = True,
) -> None:
    """Start every listener, wait for ``stop`` (or SIGTERM/SIGINT), then drain within ``grace`` seconds.

    :param on_ready: called once all listeners are bound, with ``{name: bound port}`` (port 0 binds a free one).
    :raises OSError: when an address cannot be bound; listeners already started are stopped first.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    runners: list[web.AppRunner] = []
    installed: list[int] = []
    drain: asyncio.Task[Any] | None = None

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            logger.info("%s: draining (up to %.0fs); send again to stop now", signal.Signals(signum).name, grace)
            notify(stopping=1, status="draining")
            stop.set()
        elif drain is not None:
            logger.warning("%s again: stopping now", signal.Signals(signum).name)
            drain.cancel()

    try:
        ports: dict[str, int] = {}
        for lst in listeners:
            runner = web.AppRunner(
                lst.app,
                shutdown_timeout=0.2,  # the drain has already waited out the grace period (see _drain)
                handler_cancellation=True,  # a client that disconnects aborts its upstream request
                access_log_class=AccessLogger,
            )
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(runner, lst.host, lst.port, reuse_address=True, reuse_port=lst.reuse_port or None)
            await site.start()
            sockets = [s for s in (runner.addresses or [])]
            ports[lst.name] = sockets[0][1] if sockets else lst.port
            logger.info("%s listening on http://%s:%d", lst.name, lst.host, ports[lst.name])
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
        _freeze_startup_objects()
        if on_ready is not None:
            on_ready(ports)
        await stop.wait()
    finally:
        drain = asyncio.ensure_future(_drain(runners, grace))
        try:
            await drain
        except asyncio.CancelledError:
            if not drain.cancelled():
                raise
        for signum in installed:
            loop.remove_signal_handler(signum)


def _freeze_startup_objects() -> None:
    """Move everything allocated while starting (modules, config, plugins) out of the collector's reach.

    Those objects live as long as the process; without this every full collection walks all of them again,
    and under load collections run often. (``gc.freeze``, as CPython's docs suggest for servers.)
    """
    gc.collect()
    gc.freeze()


async def _drain(runners: Sequence[web.AppRunner], grace: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    # Stop accepting everywhere first, so no listener takes new work while another is still draining.
    for runner in runners:
        for site in list(runner.sites):
            await site.stop()
    apps = [runner.app for runner in runners if isinstance(runner, web.AppRunner)]
    try:
        while any(app.get(active_key) for app in apps) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # a poll, only while shutting down
    finally:  # also when a second signal cancels the wait
        err = Overloaded("the server is shutting down; retry on another instance", retry_after=1)
        ended = sum([await end_requests(app, err) for app in apps])
        if ended:
            logger.warning("grace period over: ended %d request(s) still running", ended)
        cleanup = asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
        try:
            results = await asyncio.wait_for(cleanup, CLEANUP_S)
        except TimeoutError:
            logger.error("cleanup took longer than %.1fs; stopping anyway", CLEANUP_S)
            results = []
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
            logger.error("error while shutting down: %r", result)
    logger.info("stopped")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` to completion in a new event loop, on uvloop when it is installed."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415  (optional dependency)

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
