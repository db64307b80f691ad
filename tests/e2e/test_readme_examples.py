"""The README's shell examples work as written against ``helexa run --role both``.

The commands are taken from the README itself and run with bash; only the ports and the home directory are
the test's. Hugging Face is a local fake hub (``HF_ENDPOINT``) that serves the demo GGUF under the names the
examples use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, engine_ports, free_port, wait_http
from tests.fakes import fake_hub

README = (ROOT / "README.md").read_text()


def shell_block_after(heading: str) -> str:
    section = README.split(heading, 1)[1]
    return re.search(r"```sh\n(.+?)\n```", section, re.S).group(1)


def commands(block: str) -> list[str]:
    """The block's commands (continuation lines joined, comments and ``helexa run`` lines dropped)."""
    joined = block.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()  # noqa: PLW2901
        if line and not line.startswith(("#", "helexa run", ".venv/bin/helexa run")):
            out.append(line)
    return out


@pytest.fixture
def both(demo_models_dir, smollm2_gguf, helexa_process, tmp_path):
    hub_port = free_port()
    files = {
        "Qwen/Qwen3-0.6B-GGUF": ("Qwen3-0.6B-Q8_0.gguf", smollm2_gguf),
        "Qwen/Qwen3-8B-GGUF": ("Qwen3-8B-Q4_K_M.gguf", smollm2_gguf),
    }
    hub = fake_hub.spawn(hub_port, files)
    home = tmp_path / "home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HELEXA_", "HF_"))},
        "HOME": str(home),
        "HF_ENDPOINT": f"http://127.0.0.1:{hub_port}",
        "HELEXA_NEURON__MODEL_DIRS": f'["{demo_models_dir}"]',
        "HELEXA_NEURON__PORT_RANGE": str(engine_ports()),
        "HELEXA_NEURON__HF_CACHE_DIR": str(tmp_path / "hf"),
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # `helexa` as the README calls it
    }
    try:
        wait_http(f"http://127.0.0.1:{hub_port}/api/models/Qwen/Qwen3-0.6B-GGUF")
        ports = {"31313": free_port(), "31314": free_port(), "13131": free_port()}  # the README's, moved
        env["HELEXA_GATEWAY__LISTEN"] = f"127.0.0.1:{ports['31313']}"
        env["HELEXA_GATEWAY__METRICS_LISTEN"] = f"127.0.0.1:{ports['31314']}"
        env["HELEXA_NEURON__LISTEN"] = f"127.0.0.1:{ports['13131']}"
        env["HELEXA_NEURON__STATE_DIR"] = str(home / ".local/state/helexa")  # the README's ~/… under this HOME
        helexa_process("run", "--role", "both", env=env)
        wait_http(f"http://127.0.0.1:{ports['31313']}/healthz", timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            models = ["curl", "-s", f"localhost:{ports['31313']}/v1/models"]
            if '"status":"loaded"' in subprocess.run(models, capture_output=True, text=True).stdout.replace(" ", ""):
                break
            time.sleep(0.5)
        yield env, ports
    finally:
        hub.terminate()
        hub.wait(timeout=10)


def run(env: dict[str, str], command: str) -> str:
    done = subprocess.run(
        ["bash", "-c", "TOKEN=$(cat ~/.local/state/helexa/neuron.token); " + command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return done.stdout


def test_the_readme_examples_work_as_written(both):
    env, ports = both
    gateway = commands(shell_block_after("Then, from another terminal, any OpenAI client:"))
    neuron = commands(shell_block_after("## The neuron"))
    assert any("31313/v1/chat/completions" in c for c in gateway) and any("13131/models/load" in c for c in neuron)
    for command in [*gateway, *neuron]:
        if command.startswith("TOKEN="):
            continue
        command = command.replace(".venv/bin/helexa", "helexa")  # noqa: PLW2901
        for readme_port, port in ports.items():
            command = command.replace(f":{readme_port}", f":{port}")  # noqa: PLW2901
        out = run(env, command)
        if command.startswith("curl"):
            body = json.loads(out)
            assert "error" not in body, (command, body)
            if "chat/completions" in command:
                assert body["choices"][0]["message"]["content"], body
        elif command.startswith("helexa pull"):
            assert "ready: " in out, out
        elif command.startswith("helexa status"):
            assert "smollm2-135m-instruct" in out and "loaded" in out, out
