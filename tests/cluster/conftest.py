"""A real Redis server per test (Debian's redis-server, installed by the test command when missing), on a port of
this run's block, its data under the test's directory; stopped (and restartable) by PID. And a second "host": a
network namespace with links of its own to this one, to cut a gateway off with ``ip link set down``."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import peers_key
from tests.conftest import free_port, make_config, until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import wait_healthy
from tests.tools import debian_tool


class RedisServer:
    """One ``redis-server`` process on loopback; :meth:`stop` and :meth:`start` again keep its port and its data
    (an append-only file under ``directory``, written at the stop)."""

    def __init__(
        self, binary: str, directory: Path, binds: tuple[str, ...] = ("127.0.0.1",), password: str = ""
    ) -> None:
        self.binary, self.directory, self.port, self.binds = binary, directory, free_port(), binds
        self.password = password  # required of clients when set (Redis refuses other hosts without one)
        self.proc: subprocess.Popen | None = None

    def url_at(self, address: str) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{address}:{self.port}/0"

    @property
    def url(self) -> str:
        return self.url_at("127.0.0.1")

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", *self.binds, "--save", "", "--appendonly", "yes"]
        argv += ["--requirepass", self.password] if self.password else []
        argv += ["--dir", str(self.directory), "--daemonize", "no", "--logfile", str(self.directory / "redis.log")]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.directory / "redis.log").read_text()[-2000:]
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.02)
        raise TimeoutError("redis-server did not answer within 10 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(debian_tool("redis-server", "redis-server"), tmp_path)
    server.start()
    yield server
    server.stop()


class OtherHost:
    """A network namespace with two links to this one, each a veth pair with a /30 of its own: ``data`` (for
    neurons and clients) and ``store`` (for the cluster store), so one can be cut and not the other. Addresses:
    ``here[link]`` on this side, ``there[link]`` in the namespace; ``wrap`` runs a command inside it."""

    def __init__(self, ip: str) -> None:
        n = os.getpid() % 12500  # one namespace, and one 10.x.y.0/24, per test process
        self.ip, self.name = ip, f"helexa-{os.getpid()}"
        net = f"10.{200 + n // 250}.{n % 250}"
        self.here = {"data": f"{net}.1", "store": f"{net}.5"}
        self.there = {"data": f"{net}.2", "store": f"{net}.6"}
        self.links = {link: (f"hx{link[0]}{os.getpid()}h", f"hx{link[0]}{os.getpid()}n") for link in self.here}

    @property
    def wrap(self) -> tuple[str, ...]:
        return (self.ip, "netns", "exec", self.name)

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"

    def create(self) -> None:
        self._run(self.ip, "netns", "add", self.name)
        self._run(*self.wrap, self.ip, "link", "set", "lo", "up")
        for link, (outside, inside) in self.links.items():
            self._run(self.ip, "link", "add", outside, "type", "veth", "peer", "name", inside)
            self._run(self.ip, "link", "set", inside, "netns", self.name)
            self._run(self.ip, "addr", "add", f"{self.here[link]}/30", "dev", outside)
            self._run(self.ip, "link", "set", outside, "up")
            self._run(*self.wrap, self.ip, "addr", "add", f"{self.there[link]}/30", "dev", inside)
            self._run(*self.wrap, self.ip, "link", "set", inside, "up")

    def cut(self, link: str) -> None:
        """``ip link set down`` on the namespace's side of ``link``: nothing passes either way, no reset sent."""
        self._run(*self.wrap, self.ip, "link", "set", self.links[link][1], "down")

    def mend(self, link: str) -> None:
        self._run(*self.wrap, self.ip, "link", "set", self.links[link][1], "up")

    def delete(self) -> None:
        """The namespace and its links (deleting the namespace deletes its ends, and so both ends of each pair)."""
        subprocess.run([self.ip, "netns", "del", self.name], capture_output=True, timeout=30, check=False)
        for outside, _ in self.links.values():
            subprocess.run([self.ip, "link", "del", outside], capture_output=True, timeout=30, check=False)


@pytest.fixture
def other_host():
    """An :class:`OtherHost`, deleted at the end. Needs root (CAP_NET_ADMIN) and iproute2: skipped with the
    reason where they cannot be had — under ``CI=true`` (root) a failure, never a skip."""
    ip = debian_tool("ip", "iproute2")
    if os.geteuid() != 0:
        why = "network namespaces need root (CAP_NET_ADMIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs {why}")
        pytest.skip(why)
    host = OtherHost(ip)
    host.delete()  # what a killed run of this PID might have left
    host.create()
    yield host
    host.delete()


@pytest.fixture
def cluster(aiohttp_server, aiohttp_client, version, redis_server):
    """``await cluster(fakes, gateways=3, models=[...], **sections)`` -> (gateway clients, {name: fake})."""

    async def make(fakes: list[FakeNeuron], *, gateways: int = 3, models: list | None = None, **sections):
        neurons = []
        for fake in fakes:
            server = await aiohttp_server(fake.app())
            fake.server = server
            neurons.append({"name": fake.name, "endpoint": str(server.make_url("")).rstrip("/")})
        clients = []
        for i in range(gateways):
            cfg = make_config(
                neurons=neurons,
                models=models or [],
                gateway={"poll_interval_seconds": 0.2, **sections.get("gateway", {})},
                cluster={"store": redis_server.url, "name": f"gw{i}", "lease_seconds": 1.0},
                **{k: v for k, v in sections.items() if k != "gateway"},
            )
            client = await aiohttp_client(make_gateway_app(cfg, version))
            await wait_healthy(client, len(fakes))
            clients.append(client)
        await until(lambda: sum(c.app[peers_key].leading for c in clients) == 1, 5, "a leader")
        await until(lambda: all(len(c.app[peers_key].store.peers) == gateways for c in clients), 5, "peers")
        return clients, {f.name: f for f in fakes}

    return make
