"""Nothing an engine starts outlives it: the engine's guard (helexa.engine.guard) ends every process the engine
left behind — workers in its group, and one that left the group — when the engine exits, when it is stopped,
and when the neuron itself is killed with SIGKILL. The fake engine's ``--workers`` are like vLLM's: nothing
ties them to their parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from helexa.engine.harness import HarnessState
from helexa.engine.supervisor import EngineProcess
from tests.conftest import alive, descendants, free_port, until
from tests.fakes.fake_harness import FAKE_ENGINE

WORKERS = ["--workers", "2", "--detached-worker"]


def engine_argv(*flags: str) -> list[str]:
    return [sys.executable, str(FAKE_ENGINE), "--port", str(free_port()), *flags]


async def started(*flags: str, exits: list[str] | None = None) -> tuple[EngineProcess, set[int]]:
    """A ready headless fake engine with its workers, and every process below the guard (engine + workers)."""
    engine = EngineProcess(
        "fake",
        engine_argv("--headless", *WORKERS, *flags),
        env=None,
        health_url="",
        on_exit=(exits.append if exits is not None else None),
    )
    await engine.start(ready_timeout=30)
    assert engine.pid is not None
    await until(lambda: len(descendants(engine.pid)) == 4, 10, "the engine and its three workers run")
    return engine, descendants(engine.pid)


def gone(pids: set[int]) -> bool:
    return not any(alive(p) for p in pids)


async def test_a_stop_ends_the_engine_and_every_worker():
    engine, below = await started()
    await engine.stop(timeout=5)
    assert engine.state == HarnessState.STOPPED
    await until(lambda: gone(below), 10, "every process the engine started ended")


async def test_a_stop_that_needs_sigkill_still_ends_every_worker():
    engine, below = await started("--ignore-sigterm")
    await engine.stop(timeout=0.5)
    await until(lambda: gone(below), 10, "every process the engine started ended")


@pytest.mark.parametrize("ignore", [False, True])
async def test_a_stop_cancelled_midway_still_ends_every_worker(ignore):
    # a stop runs inside a request (an unload); the caller giving up cancels it: the group must not be SIGKILLed
    # with the guard in it (the worker that left the group would outlive both), the guard must end everything
    engine, below = await started(*(["--ignore-sigterm"] if ignore else []))
    guard = engine.pid
    stopping = asyncio.create_task(engine.stop(timeout=30))
    await asyncio.sleep(0)  # one step of the stop: SIGTERM sent, now it waits for the engine
    assert engine.state == HarnessState.STOPPING
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await until(lambda: gone(below | {guard}), 15, "every process the engine started ended")


@pytest.mark.parametrize(
    ("how", "reason"), [(signal.SIGKILL, "killed by SIGKILL"), (signal.SIGTERM, "killed by SIGTERM")]
)
async def test_an_engine_killed_takes_its_workers_and_is_reported_as_itself(how, reason):
    exits: list[str] = []
    engine, below = await started(exits=exits)
    guard = engine.pid
    [main] = [p for p in below if _parent(p) == guard]
    os.kill(main, how)  # the engine itself, not its guard
    await until(lambda: bool(exits), 10, "the neuron heard the engine end")
    assert reason in exits[0] and engine.state == HarnessState.FAILED
    await until(lambda: gone(below | {guard}), 10, "the workers ended with the engine")


async def test_an_engine_that_exits_is_reported_with_its_code():
    engine = EngineProcess("fake", engine_argv("--exit-at-start", "3"), env=None, health_url="http://127.0.0.1:9/")
    with pytest.raises(Exception, match="exited with code 3"):
        await engine.start(ready_timeout=30)


async def test_an_executable_that_does_not_exist_is_an_oserror_before_anything_starts(tmp_path):
    engine = EngineProcess("fake", [str(tmp_path / "no-such-engine")], env=None, health_url="")
    with pytest.raises(FileNotFoundError, match="no-such-engine"):
        await engine.start(ready_timeout=5)
    assert engine.pid is None


def test_nothing_survives_a_neuron_killed_with_sigkill():
    """The neuron's stand-in (a process running the supervisor) is SIGKILLed: the kernel tells the guard, which
    ends the engine and all three workers, the detached one too."""
    host = textwrap.dedent(f"""
        import asyncio, sys
        from helexa.engine.supervisor import EngineProcess
        async def main():
            engine = EngineProcess("fake", {engine_argv("--headless", *WORKERS)!r}, env=None, health_url="")
            await engine.start(ready_timeout=30)
            print("ready", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", host], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        asyncio.run(until(lambda: len(descendants(proc.pid)) == 5, 10, "guard, engine and three workers run"))
        below = descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        took = asyncio.run(until(lambda: gone(below), 10, "nothing the engine started outlived the neuron"))
        print(f"every engine process ended {took:.2f}s after the neuron was killed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])
