"""An engine's guard: the process the neuron starts for every engine, which starts the engine and sees to it that
nothing the engine started outlives it. Standard library only, run as a script so it starts in milliseconds::

    python -I -S guard.py NEURON_PID ENGINE_ARGV...

Why it exists: the neuron asks the kernel to signal its direct child when the neuron dies
(``PR_SET_PDEATHSIG``, which holds even when the neuron is SIGKILLed), but an engine's own children — vLLM's
``EngineCore`` and its workers, a gigabyte and more each — are grandchildren outside that guarantee, and they
do not all die with their parent. So the guard is the direct child, and:

- it leads the engine's process group (the neuron starts it in a new session): the neuron's SIGTERM and SIGKILL
  to the group still reach the engine and everything it forked, as they would without a guard; the guard
  ignores SIGTERM and SIGINT itself (a second signal would make llama.cpp stop at once);
- it is a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): a process that leaves the group and is orphaned
  is re-parented to it rather than to init;
- the kernel sends it SIGUSR1 when the neuron dies, and the engine SIGKILL when the guard dies; the neuron sends
  it SIGUSR1 too, when an engine ignored SIGTERM for the whole grace period;
- when the engine exits, or on SIGUSR1, it SIGKILLs every process of its group and every descendant,
  reaps them, and exits as the engine did: the same exit code, or killed by the same signal, so the neuron
  reports the engine's own end ("killed by SIGKILL", "exited with code 3").

An engine that cannot be executed ends with code 127 and a line saying why.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import sys
import time

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
END_SIGNAL = signal.SIGUSR1  # end everything now: the kernel's word that the neuron died, or the neuron's own
REAP_SECONDS = 10.0  # a process stuck in the kernel (a GPU driver call) may take a while to die


class _End(Exception):
    pass


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def _end_now(signum: int, frame: object) -> None:
    raise _End


def _watch_parent(neuron: int) -> None:
    """Where the kernel cannot signal a parent's death (not Linux): look once a second."""

    def look(signum: int, frame: object) -> None:
        if os.getppid() != neuron:
            raise _End

    signal.signal(signal.SIGALRM, look)
    signal.setitimer(signal.ITIMER_REAL, 1.0, 1.0)


def _ignore(signum: int, frame: object) -> None:
    """The group's SIGTERM reached the engine too; the guard waits for the engine to act on it."""


def _processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live process, from ``/proc`` (zombies left out)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"Z":
            found[int(name)] = (int(fields[1]), int(fields[2]))
    return found


def _leftovers(me: int) -> list[int]:
    """Every live process in this process's group or below it, but itself."""
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in processes.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, group) in processes.items() if group == me}
    todo = list(children.get(me, ()))
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, ()))
    found.discard(me)
    return sorted(found)


def _end_the_rest(me: int) -> None:
    """SIGKILL every leftover and reap the ones that were, or became, this process's children."""
    deadline = time.monotonic() + REAP_SECONDS
    while True:
        left = _leftovers(me)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        if not left or time.monotonic() >= deadline:
            return
        time.sleep(0.01)


def _spawn(argv: list[str]) -> int:
    pid = os.fork()
    if pid:
        return pid
    try:  # the engine: dies when its guard dies, with the default signal dispositions
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, END_SIGNAL):
            signal.signal(signum, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"helexa: cannot start the engine {argv[0]!r}: {exc.strerror}\n".encode(errors="replace"))
    os._exit(127)


def _exit_as(status: int) -> None:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the engine's crash, not the guard's core
        if signum not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main(args: list[str]) -> None:
    """Run ``args[1:]`` as the engine for the neuron whose pid is ``args[0]``; never returns."""
    neuron, argv = int(args[0]), args[1:]
    me = os.getpid()
    signal.signal(END_SIGNAL, _end_now)
    signal.signal(signal.SIGTERM, _ignore)
    signal.signal(signal.SIGINT, _ignore)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if not _prctl(_PR_SET_PDEATHSIG, END_SIGNAL):  # set by the neuron already; this tells if it can be
        _watch_parent(neuron)
    try:
        if os.getppid() != neuron:  # the neuron died before the handler was in place
            raise _End
        engine = _spawn(argv)
        while True:
            pid, status = os.waitpid(-1, 0)
            if pid == engine:
                break
    except _End:
        _quiet()
        _end_the_rest(me)
        os._exit(1)
    _quiet()
    _end_the_rest(me)
    _exit_as(status)


def _quiet() -> None:
    """No more interruptions while the guard ends the rest."""
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    for signum in (END_SIGNAL, signal.SIGALRM):
        signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
    main(sys.argv[1:])
