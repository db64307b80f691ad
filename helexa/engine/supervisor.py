"""One engine subprocess: spawn, readiness, bounded logs, crash detection, stop. No policy, only mechanism.

States (``HarnessState``): ``starting`` → ``ready`` → ``stopping`` → ``stopped``; any unexpected exit →
``failed`` with ``last_error`` holding the exit code (the last log lines go to the neuron's log).

Orphans: every engine runs under its guard (``helexa.engine.guard``), a small process that leads the engine's
own session (process group), learns from the kernel when the neuron dies — even by SIGKILL — and then, or when
the engine exits, kills everything the engine started (vLLM's workers, which outlive their parents). ``pid``
is the guard's (the engine is its only child): SIGKILL to it, or any signal to its group, reaches the engine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import aiohttp

from helexa.engine import guard
from helexa.engine.harness import HarnessState

__all__ = ["EngineFailed", "EngineProcess"]

logger = logging.getLogger(__name__)
PROGRESS_EVERY_S = 15.0  # a log line this often while an engine starts
HEADLESS_SETTLE_S = 1.0  # an engine with no health URL counts as started once it ran this long
LAST_WORDS_S = 1.0  # how long a failed engine's last output may take to arrive before the failure is reported
MAX_LINE = 64 * 1024  # longer output lines are cut
_PR_SET_PDEATHSIG = 1


class _Output(asyncio.SubprocessProtocol):
    """The engine's output, line by line, and its exit — known when the process exits, whoever still holds the
    output pipe (a process that escaped the engine's group may)."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self._line, self._partial = line, bytearray()
        self.exited, self.closed = asyncio.Event(), asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._partial += data
        *lines, rest = self._partial.split(b"\n")
        for line in lines:
            self._line(line[:MAX_LINE].decode(errors="replace").rstrip())
        self._partial = bytearray(rest[:MAX_LINE])  # an overlong line: keep going, drop the overlong part

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if self._partial:
            self._line(self._partial.decode(errors="replace").rstrip())
            self._partial.clear()
        self.closed.set()

    def process_exited(self) -> None:
        self.exited.set()


class EngineFailed(Exception):
    """The engine did not come up (exited, or timed out); the message carries the reason and log tail."""


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, guard.END_SIGNAL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class EngineProcess:
    """A supervised engine process serving one model.

    :param name: the model id; engine output goes to the logger ``helexa.engine.<name>``.
    :param on_exit: called once if the process exits while not being stopped, with the failure reason.
    :param health_headers: sent with every readiness poll of ``health_url`` (the engine's secret).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None,
        health_url: str,
        health_headers: dict[str, str] | None = None,
        log_lines: int = 1000,
        on_exit: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.health_url = health_url
        self.health_headers = health_headers or {}
        self.state = HarnessState.STOPPED
        self.last_error = ""
        self.started_at = 0.0
        self._logs: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._transport: asyncio.SubprocessTransport | None = None
        self._output: _Output | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._exited = asyncio.Event()
        self._on_exit = on_exit
        self._engine_log = logging.getLogger(f"helexa.engine.{name}")

    @property
    def pid(self) -> int | None:
        """The engine's process id while it runs."""
        running = self._transport is not None and self._transport.get_returncode() is None
        return self._transport.get_pid() if running else None

    def logs(self, last: int | None = None) -> list[str]:
        """The most recent output lines (stdout and stderr interleaved), oldest first."""
        lines = list(self._logs)
        return lines[-last:] if last else lines

    def _failed(self, reason: str) -> None:
        """Record why the engine failed. ``last_error`` carries the reason only — it reaches every client key
        (``/fleet``, load errors) — while the output, which may hold other users' prompts, goes to the
        neuron's own log and stays readable by admins through the engine-log routes."""
        self.last_error = f"{reason} (its output: helexa logs {self.name})"
        tail = self.logs(15)
        logger.error("engine for %s: %s; its last %d lines of output follow", self.name, reason, len(tail))
        for line in tail:
            logger.error("engine for %s | %s", self.name, line)

    async def start(self, ready_timeout: float) -> None:
        """Spawn the engine and wait until ``health_url`` answers 200 (none: until it ran a second).

        :raises EngineFailed: the process exited, or was not ready within ``ready_timeout`` (then stopped).
        :raises OSError: the executable cannot be found.
        """
        path = (self.env if self.env is not None else os.environ).get("PATH", os.defpath)
        if not self.argv or shutil.which(self.argv[0], path=path) is None:
            name = self.argv[0] if self.argv else ""
            raise FileNotFoundError(errno.ENOENT, "no such executable", name)
        self.state = HarnessState.STARTING
        self.started_at = time.monotonic()
        logger.info("starting engine for %s: %s", self.name, " ".join(self.argv))
        self._output = _Output(self._log_line)
        self._transport, _ = await asyncio.get_running_loop().subprocess_exec(
            lambda: self._output,
            sys.executable,
            "-I",
            "-S",
            guard.__file__,
            str(os.getpid()),
            *self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        self._tasks = [asyncio.create_task(self._watch())]
        try:
            await asyncio.wait_for(self._until_ready(), ready_timeout)
        except TimeoutError:
            await self.stop()
            self.state = HarnessState.FAILED
            self._failed(f"not ready within {ready_timeout:.0f}s")
            raise EngineFailed(self.last_error) from None
        except BaseException:
            if self.state != HarnessState.FAILED:
                await self.stop()
            raise
        self.state = HarnessState.READY
        logger.info("engine for %s ready in %.1fs (pid %d)", self.name, time.monotonic() - self.started_at, self.pid)

    async def _until_ready(self) -> None:
        if not self.health_url:  # a headless engine (a gang's follower rank): up once it did not exit at once
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exited.wait(), HEADLESS_SETTLE_S)
            if self._exited.is_set():
                raise EngineFailed(self.last_error)
            return
        timeout = aiohttp.ClientTimeout(total=2)
        next_report = time.monotonic() + PROGRESS_EVERY_S
        async with aiohttp.ClientSession(timeout=timeout, headers=self.health_headers) as session:
            while True:
                if self._exited.is_set():
                    raise EngineFailed(self.last_error)
                if time.monotonic() >= next_report:  # big models take minutes: say what the engine is doing
                    next_report += PROGRESS_EVERY_S
                    last = self._logs[-1][:160] if self._logs else "no output yet"
                    elapsed = time.monotonic() - self.started_at
                    logger.info("engine for %s still starting after %.0fs: %s", self.name, elapsed, last)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.health_url) as resp:
                        if resp.status == 200:
                            return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._exited.wait(), 0.1)

    def _log_line(self, text: str) -> None:
        self._logs.append(text)
        self._engine_log.debug("%s", text)

    async def _watch(self) -> None:
        assert self._output is not None and self._transport is not None
        await self._output.exited.wait()
        code = self._transport.get_returncode()
        assert code is not None
        if self.state in (HarnessState.STOPPING, HarnessState.STOPPED):
            self._exited.set()
            return
        with contextlib.suppress(TimeoutError):  # read its last words before reporting
            await asyncio.wait_for(self._output.closed.wait(), LAST_WORDS_S)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        self._signal(signal.SIGKILL)  # its group, should the guard itself have been killed
        self._failed(f"engine {how}")
        self._transport.close()  # its pipe too, should a process the engine started still hold it
        was_ready = self.state == HarnessState.READY
        self.state = HarnessState.FAILED
        self._exited.set()
        if was_ready and self._on_exit is not None:
            self._on_exit(self.last_error)

    async def stop(self, timeout: float = 15.0) -> None:  # noqa: ASYNC109  (a grace period, not a deadline)
        """SIGTERM the engine's process group; after ``timeout`` seconds have the guard end everything the
        engine started, then SIGKILL the group should the guard not manage within seconds. Idempotent."""
        transport = self._transport
        if transport is None or transport.get_returncode() is not None:
            self.state = HarnessState.STOPPED if self.state != HarnessState.FAILED else self.state
            await self._reap()
            return
        self.state = HarnessState.STOPPING
        self._signal(signal.SIGTERM)
        try:
            await self._stopped(timeout)
        except asyncio.CancelledError:  # no time left to wait: the guard ends everything at once (milliseconds)
            self._end_now()
            await self._close_when_ended(transport)  # closing kills the guard: only once it is done
            raise
        self._signal(signal.SIGKILL)  # anything left in its group
        self.state = HarnessState.STOPPED
        await self._reap()

    async def _stopped(self, timeout: float) -> None:  # noqa: ASYNC109  (a grace period, not a deadline)
        assert self._transport is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._exited.wait()), timeout)
        except TimeoutError:
            logger.warning("engine for %s ignored SIGTERM for %.0fs; killing it", self.name, timeout)
            self._end_now()
            try:
                await asyncio.wait_for(asyncio.shield(self._exited.wait()), guard.REAP_SECONDS + 1)
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await self._exited.wait()

    def _end_now(self) -> None:
        """Have the guard SIGKILL the engine's group and everything below it, now. Never the group first: that
        would kill the guard too, before it found what left the group (vLLM's EngineCore does). The group
        only when the guard is gone already."""
        assert self._transport is not None
        if self._transport.get_returncode() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._transport.get_pid(), guard.END_SIGNAL)
        else:
            self._signal(signal.SIGKILL)

    async def _close_when_ended(self, transport: asyncio.SubprocessTransport) -> None:
        """Close ``transport`` once its guard has ended (SIGKILL its group should it take longer than it may; at
        once, should this wait be cancelled too)."""
        assert self._output is not None
        try:
            await asyncio.wait_for(self._output.exited.wait(), guard.REAP_SECONDS + 1)
        except TimeoutError:
            self._signal(signal.SIGKILL)
        finally:
            transport.close()

    def _signal(self, signum: int) -> None:
        assert self._transport is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._transport.get_pid(), signum)

    async def _reap(self) -> None:
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._transport is not None and self._transport.get_returncode() is not None:
            self._transport.close()  # its pipe too, should a process the engine started still hold it
