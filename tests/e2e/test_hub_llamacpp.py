"""A model pulled from a Hugging Face hub, loaded by real llama.cpp, chatted with through the gateway.

Real processes end to end: a fake hub (``tests/fakes/fake_hub.py``) serving the SmolLM2 GGUF at a limited rate,
``helexa run --role both`` with ``HF_ENDPOINT`` pointing at it, ``helexa pull`` and ``helexa status`` as a user
runs them, and the official ``openai`` SDK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import engine_ports, free_port, wait_http
from tests.fakes import fake_hub

RATE = 24 * 1024 * 1024  # bytes/s: the ~98 MB file takes ~4 s, long enough to watch


@pytest.fixture
def fleet(smollm2_gguf, helexa_process, tmp_path):
    hub_port, gateway, neuron = free_port(), free_port(), free_port()
    name = "SmolLM2-135M-Instruct-Q4_1.gguf"
    files = {repo: (name, smollm2_gguf) for repo in ("acme/SmolLM2-GGUF", "acme/SmolLM2-copy-GGUF")}
    hub = fake_hub.spawn(hub_port, files, rate=RATE)
    config = tmp_path / "helexa.toml"
    config.write_text(
        f"""
[gateway]
listen = "127.0.0.1:{gateway}"
metrics_listen = "127.0.0.1:{free_port()}"
poll_interval_seconds = 0.5
[neuron]
listen = "127.0.0.1:{neuron}"
model_dirs = ["{tmp_path / "models"}"]
hf_cache_dir = "{tmp_path / "hf"}"
port_range = {engine_ports()}
[[models]]
id = "smol"
harness = "llamacpp"
source = "hf:acme/SmolLM2-copy-GGUF"
quant = "Q4_1"
options = {{ ctx_size = 2048, parallel = 1 }}
"""
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}",
        "HELEXA_CONFIG": str(config),
        "HELEXA_NEURON__STATE_DIR": str(helexa_process.state_dir),  # helexa pull reads the token there
    }
    env.pop("HF_TOKEN", None)
    env.pop("HF_HUB_OFFLINE", None)
    try:
        wait_http(f"http://127.0.0.1:{hub_port}/api/models/acme/SmolLM2-GGUF")
        helexa_process("run", "--role", "both", env=env)
        wait_http(f"http://127.0.0.1:{gateway}/healthz", timeout=30)
        yield env, f"http://127.0.0.1:{gateway}", tmp_path
    finally:
        hub.terminate()
        hub.wait(timeout=10)


def helexa(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "helexa", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_pull_then_load_through_the_gateway_and_chat(fleet):
    env, base, tmp_path = fleet
    pulled = helexa(env, "pull", "hf:acme/SmolLM2-GGUF", "--quant", "q4_1")
    assert pulled.returncode == 0, pulled.stderr
    lines = pulled.stdout.splitlines()
    assert any("% of" in line and "/s" in line for line in lines), lines  # progress while it downloaded
    assert lines[-1].startswith("ready: ") and "SmolLM2-135M-Instruct-Q4_1.gguf" in lines[-1]
    blob = Path(lines[-1].removeprefix("ready: ").split(" (")[0]) / "SmolLM2-135M-Instruct-Q4_1.gguf"
    assert blob.resolve().parent.name == "blobs" and str(tmp_path / "hf") in str(blob.resolve())

    # a catalogue model whose files are not here: the first request downloads, loads, and answers
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=180)
    import threading

    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            reply = client.chat.completions.create(
                model="smol", messages=[{"role": "user", "content": "Hello!"}], max_tokens=40
            )
            answer["text"] = reply.choices[0].message.content
        except Exception as exc:  # reported below
            answer["error"] = exc

    asker = threading.Thread(target=ask)
    asker.start()
    seen_status = seen_fleet = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and asker.is_alive() and not (seen_status and seen_fleet):
        status = helexa(env, "status", "--url", base)
        for line in status.stdout.splitlines():
            if line.startswith("smol ") and "downloading" in line and "% of" in line:
                seen_status = line
        fleet_view = json.loads(helexa(env, "status", "--url", base, "--json").stdout)
        for n in fleet_view["neurons"]:
            for m in n["models"]:
                if m["id"] == "smol" and m["status"] == "downloading" and m["download"]["bytes_done"] > 0:
                    seen_fleet = json.dumps(m["download"])
        time.sleep(0.2)
    asker.join(timeout=180)
    assert "error" not in answer, answer
    assert seen_status, "helexa status never showed the download"
    assert seen_fleet, "the fleet view never showed the download's bytes"
    text = str(answer["text"])
    assert text.strip() and "<|" not in text
    cards = {m.id: (m.model_extra or {}) for m in client.models.list().data}
    assert cards["smol"]["status"] == "loaded"
