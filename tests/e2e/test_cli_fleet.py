"""``helexa status``, ``models`` and ``logs`` read the configuration the daemons read, against a running fleet
with the demo model on real llama.cpp."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from tests.conftest import engine_ports, free_port, wait_http


def helexa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helexa", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_status_models_and_logs_from_the_config(demo_models_dir, helexa_process, tmp_path):
    gateway = free_port()
    config = tmp_path / "helexa.toml"
    config.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{gateway}"
metrics_listen = "127.0.0.1:{free_port()}"
poll_interval_seconds = 0.5
[auth]
api_keys = ["sk-inference"]
admin_keys = ["sk-admin"]
[neuron]
listen = "127.0.0.1:{free_port()}"
model_dirs = ["{demo_models_dir}"]
port_range = {engine_ports()}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELEXA_")}
    env |= {"HELEXA_CONFIG": str(config), "HELEXA_NEURON__STATE_DIR": str(helexa_process.state_dir)}
    helexa_process("run", "--role", "both", env=env)
    wait_http(f"http://127.0.0.1:{gateway}/healthz", timeout=30)
    deadline, fleet = time.monotonic() + 120, {}
    while time.monotonic() < deadline:  # no --url, no --api-key: both from the configuration
        done = helexa(env, "status", "--json")
        assert done.returncode == 0, done.stderr
        fleet = json.loads(done.stdout)
        if any(m["status"] == "loaded" for n in fleet["neurons"] for m in n["models"]):
            break
        time.sleep(0.5)
    table = helexa(env, "status").stdout
    neuron_row = next(line for line in table.splitlines() if line.startswith("local "))
    assert " up " in neuron_row and "CPU (" in neuron_row, table
    assert re.search(r"\d+(\.\d)? [MG]iB / \d+(\.\d)? GiB", neuron_row), table  # RAM on a CPU host
    assert neuron_row.split()[-1] == "1", neuron_row  # one model running; the catalogue's others not counted
    assert "smollm2-135m-instruct" in table and "loaded" in table

    models = json.loads(helexa(env, "models", "--json").stdout)
    assert {m["id"]: m["status"] for m in models["data"]}["smollm2-135m-instruct"] == "loaded"

    logs = helexa(env, "logs", "smollm2", "--lines", "20")
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.startswith("# neuron local, model smollm2-135m-instruct") and len(logs.stdout.splitlines()) > 2
    missing = helexa(env, "logs", "nope")
    assert missing.returncode == 1 and "nope" in missing.stderr
    wrong = helexa({**env, "HELEXA_API_KEY": "sk-inference"}, "logs", "smollm2")
    assert wrong.returncode == 1 and "admin" in wrong.stderr  # an inference key cannot read engine logs
