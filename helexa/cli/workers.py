"""``[gateway] workers = N``: N gateway processes on one port, the kernel spreading connections over them.

Each worker is ``helexa run --role gateway --worker I``, a process of its own (one core each), listening on the
gateway's port with ``SO_REUSEPORT`` and serving its metrics on the metrics port + I; they share limits, loads and
sessions through ``[cluster] store`` like gateways on separate hosts. This process only supervises: it starts
them, passes SIGTERM or SIGINT on (they drain), starts again one that died on its own (after a pause that grows
while they keep dying), and exits once they all stopped. Should it die itself, even by SIGKILL, the kernel sends
each worker SIGTERM (``PR_SET_PDEATHSIG``): none outlives it. Under systemd (``Type=notify``) it is this process
that says ``READY=1`` — once the port answers — and ``STOPPING=1``, so the unit keeps ``NotifyAccess=main``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from types import FrameType

from helexa.server.sdnotify import notify

__all__ = ["run_workers"]

logger = logging.getLogger(__name__)
MAX_PAUSE_S = 30.0  # longest wait before a worker that keeps dying is started again
_PR_SET_PDEATHSIG = 1


def _ends_with(parent: int) -> Callable[[], None]:
    """A worker gets SIGTERM (and drains) when this process dies, even by SIGKILL: no worker outlives it."""

    def preexec() -> None:  # between fork and exec: minimal
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # it died before prctl took effect
            os._exit(1)

    return preexec


def _tell_when_serving(listen: tuple[str, int], count: int, timeout: float = 120.0) -> None:
    """``READY=1`` to systemd once the port accepts connections (a worker serves)."""
    host, port = listen
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            time.sleep(0.1)
            continue
        notify(ready=1, status=f"serving with {count} workers on :{port}")
        return


def run_workers(count: int, args: list[str], listen: tuple[str, int]) -> int:
    """Run ``count`` workers of ``helexa run --role gateway`` (with ``args``: the config option, the log format)
    on ``listen`` until a signal stops them; the exit code (0 when they stopped on a signal)."""
    command = [sys.executable, "-m", "helexa", "run", "--role", "gateway", *args]
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # systemd hears from this process only
    procs: dict[int, subprocess.Popen[bytes]] = {}
    pauses: dict[int, float] = {}
    stopping: list[int] = []

    def start(index: int) -> None:
        argv = [*command, "--worker", str(index)]
        # preexec_fn is safe here: this process runs no threads
        procs[index] = subprocess.Popen(argv, env=env, preexec_fn=_ends_with(os.getpid()))  # noqa: PLW1509
        logger.info("gateway worker %d started (pid %d)", index, procs[index].pid)

    def forward(signum: int, frame: FrameType | None) -> None:
        if not stopping:
            notify(stopping=1, status="draining")
        stopping.append(signum)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    for index in range(count):
        start(index)
    _tell_when_serving(listen, count)
    code = 0
    while procs:
        pid, status = os.wait()
        index = next((i for i, p in procs.items() if p.pid == pid), None)
        if index is None:
            continue
        procs[index].returncode = os.waitstatus_to_exitcode(status)
        del procs[index]
        if stopping:
            continue
        code = 1
        pause = min(MAX_PAUSE_S, pauses.get(index, 0.5) * 2)
        pauses[index] = pause
        logger.error("gateway worker %d exited (status %d); starting it again in %.0fs", index, status, pause)
        time.sleep(pause)
        if not stopping:
            start(index)
    return 0 if stopping else code
