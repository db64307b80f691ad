"""The RPM's units and files, checked with systemd's and RPM's own tools, and helexa started as a unit starts it.

``systemd-analyze verify`` parses the units, ``systemd-analyze security`` scores their sandboxing, ``rpmlint``
checks the spec. Then each service runs with exactly the environment and command line its unit gives it (paths
under /etc/helexa and /var/lib/helexa moved into a temporary directory) and must send systemd ``READY=1`` only
once it answers, and ``STOPPING=1`` when it drains.
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from tests.tools import debian_tool

RPM = ROOT / "rpm"
UNITS = ("helexa-gateway.service", "helexa-neuron.service")  # the daemons
ALL_UNITS = (*UNITS, "helexa-bench.service", "helexa-bench.timer")


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(RPM / name)
    return parser


def test_units_parse_cleanly_with_systemd_analyze_verify(tmp_path):
    analyze = debian_tool("systemd-analyze", "systemd")
    fake = tmp_path / "helexa"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    for name in ALL_UNITS:  # verify wants the executable to exist: point ExecStart at a stand-in
        (tmp_path / name).write_text((RPM / name).read_text().replace("/usr/bin/helexa", str(fake)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", *ALL_UNITS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize(
    ("name", "limit"), [("helexa-gateway.service", 4.0), ("helexa-neuron.service", 4.0), ("helexa-bench.service", 4.0)]
)
def test_sandboxing_scores(name, limit):
    analyze = debian_tool("systemd-analyze", "systemd")
    done = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(RPM / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= limit, done.stdout


def test_rpmlint_is_clean():
    rpmlint = debian_tool("rpmlint", "rpmlint")
    debian_tool("rpmspec", "rpm")  # rpmlint parses spec files with it
    done = subprocess.run(
        [rpmlint, "-r", "helexa.rpmlintrc", "helexa.spec"],
        cwd=RPM,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and "0 errors, 0 warnings" in done.stdout, done.stdout + done.stderr


def test_spec_ships_license_sysusers_and_a_check():
    spec = (RPM / "helexa.spec").read_text()
    assert "%license LICENSE" in spec
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "%sysusers_create_compat rpm/helexa.sysusers" in spec and "%{_sysusersdir}/helexa.conf" in spec
    assert "useradd" not in spec
    check = spec.split("\n%check\n", 1)[1].split("\n%", 1)[0]
    assert "%pytest tests/" in check
    for name in UNITS:
        service = unit(name)["Service"]
        assert service["Type"] == "notify"
        assert not any(k.startswith("HELEXA_") for k in _environment(service)), "paths belong in /etc/helexa/*.toml"


def test_the_bench_timer_runs_a_valid_bench_command():
    from helexa.cli.commands import cli

    service = unit("helexa-bench.service")["Service"]
    env = _environment(service)
    argv = shlex.split(service["ExecStart"].replace("${HELEXA_BENCH_URL}", env["HELEXA_BENCH_URL"]))
    assert argv[:3] == ["/usr/bin/helexa", "bench", "run"]
    params = cli.get_command(None, "bench").get_command(None, "run").make_context("run", argv[3:]).params
    assert params["url"] == "http://127.0.0.1:31313" and params["db"].startswith("/var/lib/helexa/")
    assert unit("helexa-bench.timer")["Timer"]["OnUnitActiveSec"] == "1h"
    spec = (RPM / "helexa.spec").read_text()
    assert "%{_unitdir}/helexa-bench.timer" in spec and "install -Dm0644 rpm/helexa-bench.timer" in spec


def _environment(service: configparser.SectionProxy) -> dict[str, str]:
    """``Environment=`` as systemd reads it: space-separated assignments, each optionally quoted."""
    env = {}
    for line in service.get("Environment", "").splitlines():
        for assignment in shlex.split(line):
            key, _, value = assignment.partition("=")
            env[key] = value
    return env


class Notifications:
    """A stand-in for systemd's notify socket (an abstract unix datagram socket)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.address = f"@helexa-test-{os.getpid()}-{id(self)}"
        self.sock.bind("\0" + self.address[1:])
        self.sock.settimeout(0.2)

    def wait_for(self, key: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if f"{key}=1" in message.splitlines():
                return message
        raise TimeoutError(f"no {key}=1 from the service within {timeout}s")


def _as_installed(tmp_path: Path, ports: dict[str, int]) -> Path:
    """/etc/helexa as the RPM installs it, under ``tmp_path`` (paths and ports moved)."""
    etc = tmp_path / "etc" / "helexa"
    etc.mkdir(parents=True)
    shipped = {"gateway.toml": RPM / "gateway.toml", "neuron.toml": RPM / "neuron.toml"}
    shipped["models.toml"] = ROOT / "config" / "models.example.toml"
    for name, source in shipped.items():
        text = source.read_text().replace("/var/lib/helexa", str(tmp_path / "var" / "lib" / "helexa"))
        text = text.replace(":13131", f":{ports['neuron']}").replace(":31313", f":{ports['gateway']}")
        text = text.replace(":31314", f":{ports['metrics']}")
        (etc / name).write_text(text)
    (tmp_path / "var" / "lib" / "helexa").mkdir(parents=True)  # StateDirectory= creates it
    return etc


def _start(name: str, tmp_path: Path, etc: Path, notify: Notifications) -> subprocess.Popen:
    service = unit(name)["Service"]
    env = {"PATH": os.environ["PATH"], "NOTIFY_SOCKET": notify.address}
    for key, value in _environment(service).items():
        env[key] = value.replace("/var/lib/helexa", str(tmp_path / "var" / "lib" / "helexa"))
    argv = shlex.split(service["ExecStart"].replace("/etc/helexa", str(etc)))
    assert argv[0] == "/usr/bin/helexa"
    return subprocess.Popen(
        [sys.executable, "-m", "helexa", *argv[1:]],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read()


def test_services_start_as_their_units_start_them_and_tell_systemd(tmp_path):
    ports = {"neuron": free_port(), "gateway": free_port(), "metrics": free_port()}
    etc = _as_installed(tmp_path, ports)
    procs: list[subprocess.Popen] = []
    try:
        neuron_notify, gateway_notify = Notifications(), Notifications()
        procs.append(_start("helexa-neuron.service", tmp_path, etc, neuron_notify))
        status = neuron_notify.wait_for("READY", 60)
        assert "STATUS=serving" in status
        assert _get(f"http://127.0.0.1:{ports['neuron']}/healthz")  # serving when it said so
        assert (tmp_path / "var" / "lib" / "helexa" / "neuron.token").stat().st_mode & 0o077 == 0

        procs.append(_start("helexa-gateway.service", tmp_path, etc, gateway_notify))
        gateway_notify.wait_for("READY", 60)
        import json

        deadline = time.monotonic() + 20
        fleet = {}
        while time.monotonic() < deadline:  # the gateway read the neuron's token from its token_file
            fleet = json.loads(_get(f"http://127.0.0.1:{ports['gateway']}/fleet"))
            if fleet["neurons"] and fleet["neurons"][0]["healthy"]:
                break
            time.sleep(0.2)
        assert fleet["neurons"][0]["name"] == "local" and fleet["neurons"][0]["healthy"], fleet
        assert b"helexa_gateway_build_info" in _get(f"http://127.0.0.1:{ports['metrics']}/metrics")

        for proc, notify in ((procs[1], gateway_notify), (procs[0], neuron_notify)):
            proc.send_signal(signal.SIGTERM)
            notify.wait_for("STOPPING", 10)
            assert proc.wait(timeout=40) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    shutil.rmtree(tmp_path / "var", ignore_errors=True)


def test_the_gateway_unit_serves_with_a_store_and_workers(tmp_path):
    """The shipped gateway.toml with its [cluster] lines enabled and two workers: the unit's main process says
    READY=1 once a worker serves (NotifyAccess=main), both workers share the store, SIGTERM drains them all."""
    from tests.cluster.conftest import RedisServer

    redis = RedisServer(debian_tool("redis-server", "redis-server"), tmp_path)
    redis.start()
    ports = {"neuron": free_port(), "gateway": free_port(), "metrics": free_port()}
    etc = _as_installed(tmp_path, ports)
    config = etc / "gateway.toml"
    text = config.read_text().replace("# [cluster]\n", "[cluster]\n")
    text = text.replace('# store = "redis://valkey.internal:6379/0"', f'store = "{redis.url}"')
    config.write_text(text.replace("[gateway]\n", "[gateway]\nworkers = 2\n", 1))
    notify = Notifications()
    proc = _start("helexa-gateway.service", tmp_path, etc, notify)
    try:
        assert "STATUS=serving with 2 workers" in notify.wait_for("READY", 60)
        import json

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            fleet = json.loads(_get(f"http://127.0.0.1:{ports['gateway']}/fleet"))
            if len(fleet["cluster"]["gateways"]) == 2:
                break
            time.sleep(0.2)
        assert len(fleet["cluster"]["gateways"]) == 2 and fleet["cluster"]["store_up"], fleet["cluster"]
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING", 10)
        assert proc.wait(timeout=40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        redis.stop()
    shutil.rmtree(tmp_path / "var", ignore_errors=True)
