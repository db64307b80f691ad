"""The helexa command line: exit codes, one-line errors, config init/check, plugins, and a real `run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from click.testing import CliRunner

from helexa.cli.commands import cli
from helexa.cli.config_template import render_example
from tests.conftest import ROOT, free_port, wait_http


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def helexa(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**(env if env is not None else os.environ)}
    env.setdefault("HELEXA_NEURON__STATE_DIR", os.environ["HELEXA_NEURON__STATE_DIR"])  # not the real home
    return subprocess.run(
        [sys.executable, "-m", "helexa", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output.startswith("helexa, version ")


def test_unknown_role_exits_2():
    result = helexa("run", "--role", "brain")
    assert result.returncode == 2
    assert "Invalid value for '--role': 'brain' is not one of 'gateway', 'neuron', 'both'" in result.stderr


def test_missing_config_file_exits_2_with_one_line(tmp_path):
    result = helexa("run", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"Error: {tmp_path / 'nope.toml'}: no such file\n"


def test_invalid_toml_exits_2(tmp_path):
    (tmp_path / "gateway.toml").write_text("[gateway\n")
    result = helexa("run", "--role", "gateway", "--config", str(tmp_path / "gateway.toml"))
    assert result.returncode == 2
    assert result.stderr.startswith("Error: gateway.toml: invalid TOML:")
    assert "Traceback" not in result.stderr


def test_wrong_type_exits_2_naming_the_key_path(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n[[neurons]]\nname = "b"\nendpoint = 1\n')
    result = helexa("run", "--role", "gateway", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr == "Error: gateway.toml: $.neurons[1].endpoint: expected str, got int\n"


def test_unknown_key_exits_2(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text("[neuron]\nport = 1\n")
    result = invoke("config", "check", str(path))
    assert result.exit_code == 2
    assert result.output == "Error: neuron.toml: $.neuron.port: unknown key\n"


def test_config_path_from_environment(tmp_path):
    result = helexa("run", env={**os.environ, "HELEXA_CONFIG": str(tmp_path / "env.toml")})
    assert result.returncode == 2
    assert result.stderr == f"Error: {tmp_path / 'env.toml'}: no such file\n"


def test_a_tokenless_neuron_on_a_public_address_is_refused():
    env = {**os.environ, "HELEXA_NEURON__LISTEN": "0.0.0.0:0", "HELEXA_NEURON__ALLOW_UNAUTHENTICATED": "true"}
    result = helexa("run", "--role", "neuron", env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("Error: neuron.allow_unauthenticated is only allowed on a loopback address")


def test_a_neuron_without_a_token_creates_one_and_keeps_it(tmp_path):
    from helexa.cli.daemon import prepare
    from tests.conftest import make_config

    state = tmp_path / "state"
    cfg = prepare(make_config(neuron={"state_dir": str(state), "demo": False}), "neuron")
    token_file = state / "neuron.token"
    assert cfg.neuron.token and token_file.read_text().strip() == cfg.neuron.token
    assert token_file.stat().st_mode & 0o777 == 0o600 and state.stat().st_mode & 0o777 == 0o700
    again = prepare(make_config(neuron={"state_dir": str(state), "demo": False}), "neuron")
    assert again.neuron.token == cfg.neuron.token
    both = prepare(make_config(neuron={"state_dir": str(state), "demo": False, "listen": "127.0.0.1:0"}), "both")
    assert both.neurons[0].token == cfg.neuron.token  # the gateway half of --role both uses the same token
    open_ = prepare(make_config(neuron={"allow_unauthenticated": True, "demo": False}), "neuron")
    assert open_.neuron.token == ""


def test_port_in_use_exits_1_with_a_clear_message():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**os.environ, "HELEXA_NEURON__LISTEN": f"127.0.0.1:{port}"}
        result = helexa("run", "--role", "neuron", env=env)
    assert result.returncode == 1
    assert "Error: cannot start:" in result.stderr
    assert "address already in use" in result.stderr.lower()


@pytest.mark.parametrize("role", ["both", "gateway", "neuron"])
def test_config_init_matches_the_shipped_examples(role):
    name = "helexa" if role == "both" else role
    shipped = (ROOT / "config" / f"{name}.example.toml").read_text()
    assert render_example(role) == shipped, (
        f"run: helexa config init --role {role} -o config/{name}.example.toml --force"
    )
    result = invoke("config", "init", "--role", role)
    assert result.output == shipped


def test_config_init_writes_a_file_and_will_not_overwrite(tmp_path):
    target = tmp_path / "helexa.toml"
    assert invoke("config", "init", "-o", str(target)).exit_code == 0
    assert target.read_text() == render_example("both")
    result = invoke("config", "init", "-o", str(target))
    assert result.exit_code == 2
    assert "already exists; pass --force" in result.output
    assert invoke("config", "init", "-o", str(target), "--force").exit_code == 0


def test_config_check_prints_the_effective_config_with_secrets_masked(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(
        '[auth]\napi_keys = ["sk-very-secret"]\nadmin_keys = ["sk-admin-secret"]\n'
        '[[auth.keys]]\nname = "ci"\nkey = "sk-named-secret"\n[[neurons]]\nname = "a"\nendpoint = "http://a:1"\n'
    )
    result = invoke("config", "check", str(path), env={"HELEXA_NEURONS__0__TOKEN": "tok-secret"})
    assert result.exit_code == 0, result.output
    for secret in ("sk-very-secret", "sk-admin-secret", "sk-named-secret", "tok-secret"):
        assert secret not in result.output
    assert 'name = "ci"' in result.output
    assert 'api_keys = [\n    "***",\n]' in result.output or 'api_keys = [ "***" ]' in result.output.replace("\n", " ")
    assert 'endpoint = "http://a:1"' in result.output
    assert 'listen = "127.0.0.1:31313"' in result.output  # defaults are part of the effective config


def test_config_check_with_role_checks_harness_names(tmp_path):
    path = tmp_path / "helexa.toml"
    path.write_text('[[models]]\nid = "m"\nharness = "nosuch"\n')
    result = helexa("config", "check", str(path), "--role", "both")
    assert result.returncode == 2
    assert "$.models[0] (m): harness 'nosuch' is required but not installed; available: " in result.stderr
    assert "dummy" in result.stderr


def test_config_check_with_role_checks_harness_options(tmp_path):
    path = tmp_path / "helexa.toml"
    path.write_text('[[models]]\nid = "m"\nharness = "dummy"\noptions = { greeting = 5 }\n')
    result = helexa("config", "check", str(path), "--role", "both")
    assert result.returncode == 2
    assert "harness 'dummy', model 'm': options: Expected `str`, got `int` - at `$.greeting`" in result.stderr


def test_plugins_lists_entry_point_plugins():
    result = helexa("plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["plugin"]: row for row in json.loads(result.stdout)}
    assert rows["dummy"]["distribution"] == "helexa-dummy-plugin"
    assert rows["dummy"]["harnesses"] == ["dummy"]
    table = helexa("plugins").stdout
    assert "helexa-dummy-plugin" in table


def test_plugins_can_add_commands():
    result = helexa("dummy-hello")
    assert result.returncode == 0
    assert result.stdout == "hello from helexa-dummy-plugin\n"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_both_starts_without_config_and_stops_on_signal(helexa_process, signum):
    gw, metrics, neuron = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{gw}",
        "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{metrics}",
        "HELEXA_NEURON__LISTEN": f"127.0.0.1:{neuron}",
        "HELEXA_SERVER__SHUTDOWN_GRACE_SECONDS": "5",
        "HELEXA_NEURON__DEMO": "false",  # the demo engine is covered by tests/e2e
    }
    proc = helexa_process("run", "--role", "both", env=env)
    for port in (gw, metrics, neuron):
        wait_http(f"http://127.0.0.1:{port}/metrics")
    with urllib.request.urlopen(f"http://127.0.0.1:{gw}/healthz", timeout=5) as resp:
        assert json.load(resp) == {"status": "ok", "role": "gateway"}
        assert resp.headers["x-helexa-origin"] == "gateway"
    with urllib.request.urlopen(f"http://127.0.0.1:{neuron}/version", timeout=5) as resp:
        assert json.load(resp)["role"] == "neuron"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as resp:
        assert b'helexa_gateway_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in resp.read()
    began = time.monotonic()
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == 0
    assert time.monotonic() - began < 5
    output = helexa_process.output(proc)
    assert "draining" in output
    assert "Traceback" not in output


def test_run_neuron_refuses_a_catalogue_harness_that_is_not_installed(tmp_path):
    path = tmp_path / "neuron.toml"
    path.write_text('[[models]]\nid = "m"\nharness = "sglang"\n')
    result = helexa("run", "--role", "neuron", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(
        "Error: $.models[0] (m): harness 'sglang' is required but not installed; available:"
    )
    assert "llamacpp" in result.stderr


def test_run_neuron_refuses_an_unknown_default_harness():
    env = {**os.environ, "HELEXA_NEURON__DEFAULT_HARNESS": "nope", "HELEXA_NEURON__DEMO": "false"}
    result = helexa("run", "--role", "neuron", env=env)
    assert result.returncode == 2
    assert "$.neuron.default_harness: harness 'nope' is required but not installed" in result.stderr


def test_a_renamed_key_still_works_and_config_check_says_what_to_write(tmp_path):
    from helexa.config import load_config

    path = tmp_path / "gateway.toml"
    path.write_text("[eviction]\ndefrag_after_cycles = 7\n")
    notes: list[str] = []
    assert load_config(path, notes=notes).eviction.full_stop_after_unloads == 7
    assert notes == [
        "gateway.toml: [eviction] defrag_after_cycles is deprecated and goes in the next release; "
        "write full_stop_after_unloads = 7 instead"
    ]
    result = helexa("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "full_stop_after_unloads = 7" in result.stdout and "defrag_after_cycles" not in result.stdout
    assert "note: gateway.toml: [eviction] defrag_after_cycles is deprecated" in result.stderr
    both = tmp_path / "both.toml"
    both.write_text("[eviction]\ndefrag_after_cycles = 7\nfull_stop_after_unloads = 3\n")
    notes.clear()
    assert load_config(both, notes=notes).eviction.full_stop_after_unloads == 3
    assert "is ignored: full_stop_after_unloads is set too" in notes[0]
    env = {"HELEXA_EVICTION__DEFRAG_AFTER_CYCLES": "9"}
    assert load_config(None, env=env).eviction.full_stop_after_unloads == 9  # the variable's old name too
