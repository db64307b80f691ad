"""The real coding agents against the real demo model, as a new user runs them: ``helexa run --role both``
serving SmolLM2-135M on llama.cpp (its whole 8,192-token context), Claude Code with ``-p`` and ``codex exec``.

A 135M model says little of use; what is checked is that the agents' turn completes — their requests fit the
context and nothing in helexa breaks the loop — and that a prompt too long for the context ends with the error
each agent understands (Claude Code reports ``prompt is too long``; Codex stops without its five reconnects).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.agents.conftest import agent_env
from tests.agents.test_coding_agents import CODEX_FLAGS, run
from tests.conftest import free_port, wait_for_loaded, wait_http

DEMO = "smollm2-135m-instruct"
pytestmark = [pytest.mark.agents, pytest.mark.timeout(900)]


@pytest.fixture
def demo_both(demo_models_dir, helexa_process, tmp_path) -> str:
    """The URL of a ``helexa run --role both`` with its demo model loaded (no config, as the README starts it)."""
    port = free_port()
    env = {
        **os.environ,
        "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{port}",
        "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "HELEXA_NEURON__LISTEN": f"127.0.0.1:{free_port()}",
        "HELEXA_NEURON__MODEL_DIRS": json.dumps([str(demo_models_dir)]),
    }
    proc = helexa_process("run", "--role", "both", env=env)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz", timeout=30)

    wait_for_loaded(proc, url, {DEMO}, helexa_process.output, timeout=180)
    return url


def workdir(tmp_path: Path, notes: str = "Buy milk.\n") -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "notes.txt").write_text(notes)
    return work


def claude(agents_bin: Path, url: str, tmp_path: Path, prompt: str, cwd: Path) -> subprocess.CompletedProcess:
    env = agent_env(tmp_path / "claude-home", ANTHROPIC_BASE_URL=url, ANTHROPIC_API_KEY="sk-unused")
    env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = DEMO  # background calls (titles) use the same model
    env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = "1024"  # a small model's answer, bounded (docs/clients.md)
    argv = [str(agents_bin / "claude"), "-p", prompt, "--model", DEMO, "--output-format", "json"]
    return run(argv, env=env, cwd=cwd, timeout=600)


def codex(agents_bin: Path, url: str, tmp_path: Path, prompt: str, cwd: Path) -> subprocess.CompletedProcess:
    home = tmp_path / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(  # the provider docs/clients.md gives, with the demo model's context
        f"""model = "{DEMO}"
model_provider = "helexa"
model_context_window = 8192
model_auto_compact_token_limit = 6000

[model_providers.helexa]
name = "helexa"
base_url = "{url}/v1"
wire_api = "responses"
env_key = "HELEXA_API_KEY"
"""
    )
    env = agent_env(tmp_path / "home", CODEX_HOME=str(home), HELEXA_API_KEY="sk-unused")
    return run([str(agents_bin / "codex"), "exec", *CODEX_FLAGS, prompt], env=env, cwd=cwd, timeout=600)


# A question a 135M model answers briefly: asked for a long answer ("What is in notes.txt?"), it may list made-up
# files until its context is full, and the agents rightly report a cut answer as an error.
ONE_LINE = "Say hello in one short sentence."


# What the agents say when the model itself ran to its limit — a 135M model sometimes lists made-up things until
# its answer is cut. That is the model's doing, not helexa's: such a turn is tried again (three times at most);
# any other failure fails at once.
RAMBLED = ("Incomplete response returned, reason: max_output_tokens", "output token maximum")
ATTEMPTS = 3


def test_claude_code_completes_a_turn_on_the_demo_model(agents_bin, demo_both, tmp_path):
    for attempt in range(1, ATTEMPTS + 1):
        done = claude(agents_bin, demo_both, tmp_path / str(attempt), ONE_LINE, workdir(tmp_path))
        result = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
        if done.returncode == 0 and result.get("is_error") is False:
            return
        said = json.dumps(result) + done.stderr
        assert any(r in said for r in RAMBLED), (
            f"claude failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
        print(f"attempt {attempt}: the model ran to its output limit; again")
    pytest.fail(f"the model ran to its limit {ATTEMPTS} times")


def test_codex_completes_a_turn_on_the_demo_model(agents_bin, demo_both, tmp_path):
    for attempt in range(1, ATTEMPTS + 1):
        done = codex(agents_bin, demo_both, tmp_path / str(attempt), ONE_LINE, workdir(tmp_path))
        output = done.stdout + done.stderr
        errors = [line for line in output.splitlines() if "ERROR" in line]
        if done.returncode == 0 and not errors:
            return
        assert errors and all(any(r in e for r in RAMBLED) for e in errors), f"codex failed:\n{output[-4000:]}"
        print(f"attempt {attempt}: the model ran to its output limit; again")
    pytest.fail(f"the model ran to its limit {ATTEMPTS} times")


TOO_LONG = "Summarise this text. " + "The quick brown fox jumps over the lazy dog. " * 1200  # ~12k tokens


def test_claude_code_hears_prompt_is_too_long(agents_bin, demo_both, tmp_path):
    done = claude(agents_bin, demo_both, tmp_path, TOO_LONG, workdir(tmp_path))
    result = json.loads(done.stdout)
    print(f"claude -p (overflow): exit {done.returncode}, result {result['result'][:200]!r}")
    assert "prompt is too long" in result["result"].lower(), result


def test_codex_stops_at_once_when_the_prompt_does_not_fit(agents_bin, demo_both, tmp_path):
    done = codex(agents_bin, demo_both, tmp_path, TOO_LONG, workdir(tmp_path))
    output = done.stdout + done.stderr
    print("codex exec (overflow):", done.returncode, [line for line in output.splitlines() if "ERROR" in line][:3])
    assert "Reconnecting" not in output, output[-4000:]
    assert "context" in output.lower(), output[-4000:]  # Codex explains the context window to the user
