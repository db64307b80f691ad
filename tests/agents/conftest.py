"""The real coding agents, installed from npm at pinned versions, and a ``helexa run --role both`` for them.

The agents are installed once into a cache directory (``HELEXA_TEST_CACHE``, default
``~/.cache/helexa-tests``) that later runs reuse. They run with a throwaway ``HOME`` / ``CODEX_HOME`` and
with telemetry and auto-update off, since the machine has no internet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, slow_fetch_cache, wait_for_loaded, wait_http

CLAUDE_CODE = "@anthropic-ai/claude-code@2.1.331"
CODEX = "@openai/codex@0.169.0"
MODEL = "qwen-coder"
QUIET = {
    "DISABLE_TELEMETRY": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "NO_COLOR": "1",
}


@pytest.fixture(scope="session")
def agents_bin() -> Path:
    """``node_modules/.bin`` holding ``claude`` and ``codex`` at the pinned versions (installed on first use)."""
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI"):
            pytest.fail("npm is not installed; the coding-agent tests need Node.js and npm")
        pytest.skip("npm is not installed: cannot install Claude Code and the Codex CLI")
    prefix = slow_fetch_cache() / ("agents-" + CLAUDE_CODE.rsplit("@", 1)[1] + "-" + CODEX.rsplit("@", 1)[1])
    bin_dir = prefix / "node_modules" / ".bin"
    if not ((bin_dir / "claude").exists() and (bin_dir / "codex").exists()):
        prefix.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        done = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), CLAUDE_CODE, CODEX],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"npm install failed:\n{done.stdout}\n{done.stderr}"
        print(f"installed {CLAUDE_CODE} and {CODEX} in {time.monotonic() - started:.0f}s", file=sys.stderr)
    return bin_dir


@dataclass
class Stack:
    """A ``helexa run --role both`` in front of a scripted engine that records what it receives."""

    url: str
    record: Path
    workdir: Path
    secret: str

    def received(self) -> list[dict]:
        """Every chat request the engine got, in order."""
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line]


@pytest.fixture
def agent_stack(tmp_path, helexa_process) -> Iterator:
    """``start(tool_call: dict) -> Stack``: engine + ``helexa run --role both`` serving model ``qwen-coder``."""
    engines: list[subprocess.Popen] = []

    def start(tool_call: dict, *, bare_json: bool = False) -> Stack:
        workdir = tmp_path / "work"
        workdir.mkdir(exist_ok=True)
        secret = "helexa-secret-" + os.urandom(4).hex()
        (workdir / "notes.txt").write_text(f"The magic word is {secret}.\n")
        record = tmp_path / "engine-requests.jsonl"
        engine_port, gw_port, neuron_port, metrics_port = (free_port() for _ in range(4))
        call = json.dumps(tool_call).replace("{workdir}", str(workdir))
        argv = [sys.executable, str(ROOT / "tests/fakes/fake_engine.py"), "--port", str(engine_port)]
        argv += ["--model", MODEL, "--agent-tool-call", call, "--record", str(record), "--chunk-size", "7"]
        if bare_json:
            argv.append("--bare-json")
        engines.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        config = tmp_path / "helexa.toml"
        config.write_text(
            f"""
[gateway]
listen = "127.0.0.1:{gw_port}"
metrics_listen = "127.0.0.1:{metrics_port}"
poll_interval_seconds = 0.5
keepalive_seconds = 2.0
[neuron]
listen = "127.0.0.1:{neuron_port}"
model_dirs = ["{tmp_path}"]
preload = ["{MODEL}"]
[[models]]
id = "{MODEL}"
harness = "external"
source = "http://127.0.0.1:{engine_port}/v1"
"""
        )
        proc = helexa_process("run", "--role", "both", "--config", str(config))
        url = f"http://127.0.0.1:{gw_port}"
        wait_for_loaded(proc, url, {MODEL}, helexa_process.output)
        return Stack(url=url, record=record, workdir=workdir, secret=secret)

    yield start
    for engine in engines:
        engine.kill()
        engine.wait(timeout=10)


def agent_env(home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for an agent: a throwaway HOME, no telemetry, nothing inherited that configures it."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE")}
    home.mkdir(parents=True, exist_ok=True)
    return {**keep, **QUIET, "HOME": str(home), **extra}
