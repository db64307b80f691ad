"""Claude Code and the Codex CLI, the real npm packages, through ``helexa run --role both``.

A scripted engine answers the agent's first turn with a tool call (as a local model would: ``<tool_call>`` text
that the neuron turns into a structured call) and the turn after the tool result with text that quotes it. So
the agent loop runs for real: request → tool call → the client runs its own tool (Claude Code's Read, Codex's
exec_command) → tool result → final answer. The test checks the client's exit status and final text, and what
the engine received: system entries in place, namespace tools flattened, hosted tools left out, the tool
result returned.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.agents.conftest import MODEL, agent_env

CLAUDE_FLAGS = ("--output-format", "json", "--allowedTools", "Read")
CODEX_FLAGS = ("--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox")


def run(argv: list[str], *, env: dict, cwd, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def test_claude_code_runs_a_tool_loop_through_helexa(agents_bin, agent_stack, tmp_path):
    stack = agent_stack({"name": "Read", "arguments": {"file_path": "{workdir}/notes.txt"}})
    env = agent_env(tmp_path / "claude-home", ANTHROPIC_BASE_URL=stack.url, ANTHROPIC_API_KEY="sk-unused")
    env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = MODEL  # background calls (titles, summaries) use the same model
    done = run(
        [str(agents_bin / "claude"), "-p", "What does notes.txt say?", "--model", MODEL, *CLAUDE_FLAGS],
        env=env,
        cwd=stack.workdir,
    )
    assert done.returncode == 0, f"claude failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    assert result["is_error"] is False, result
    assert stack.secret in result["result"], result["result"]
    assert result["num_turns"] >= 2

    received = [r for r in stack.received() if r.get("tools")]
    first, second = received[0], received[-1]
    roles = [m["role"] for m in first["messages"]]
    # Claude Code's system prompt leads; its mid-conversation system entry stays after the user turn
    assert roles[0] == "system" and "user" in roles
    assert "system" in roles[roles.index("user") :], roles
    names = {t["function"]["name"] for t in first["tools"]}
    assert "Read" in names and "DeferredToolPlaceholder" not in names
    assert first["stream"] is True and first["chat_template_kwargs"] == {"enable_thinking": True}
    # the tool result went back to the engine as a tool message carrying the file's content
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_messages and stack.secret in json.dumps(tool_messages[-1])


def write_codex_config(home, url: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f"""model = "{MODEL}"
model_provider = "helexa"

[model_providers.helexa]
name = "helexa"
base_url = "{url}/v1"
wire_api = "responses"
env_key = "HELEXA_API_KEY"
"""
    )


def test_codex_exec_runs_a_tool_loop_through_helexa(agents_bin, agent_stack, tmp_path):
    stack = agent_stack({"name": "exec_command", "arguments": {"cmd": "cat notes.txt"}})
    codex_home = tmp_path / "codex-home"
    write_codex_config(codex_home, stack.url)
    env = agent_env(tmp_path / "home", CODEX_HOME=str(codex_home), HELEXA_API_KEY="sk-unused")
    done = run(
        [str(agents_bin / "codex"), "exec", *CODEX_FLAGS, "What does notes.txt say?"],
        env=env,
        cwd=stack.workdir,
    )
    assert done.returncode == 0, f"codex failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "The tool said:" in done.stdout and stack.secret in done.stdout, done.stdout[-2000:]

    received = [r for r in stack.received() if r.get("tools")]
    first, second = received[0], received[-1]
    assert first["messages"][0]["role"] == "system"  # Codex's developer instructions
    assert first["messages"][-1] == {"role": "user", "content": "What does notes.txt say?"}
    names = [t["function"]["name"] for t in first["tools"]]
    assert "exec_command" in names
    assert any("__" in n for n in names), "the namespace tool's members are flattened to <namespace>__<name>"
    assert all(t["type"] == "function" for t in first["tools"])  # web_search left out
    tool_messages = [m for m in second["messages"] if m["role"] == "tool"]
    assert tool_messages and stack.secret in tool_messages[-1]["content"]
    calls = [m for m in second["messages"] if m.get("tool_calls")]
    assert calls[-1]["tool_calls"][0]["function"]["name"] == "exec_command"


def test_llm_cli_calls_a_tool_a_small_model_wrote_as_bare_json(agent_stack, tmp_path):
    """Simon Willison's ``llm`` with ``-T``: the engine answers the call as fenced bare JSON, no markers."""
    stack = agent_stack({"name": "llm_time", "arguments": {}}, bare_json=True)
    user_dir = tmp_path / "llm"
    user_dir.mkdir()
    (user_dir / "extra-openai-models.yaml").write_text(
        f"- model_id: helexa-local\n  model_name: {MODEL}\n  api_base: {stack.url}/v1\n  supports_tools: true\n"
    )
    env = agent_env(tmp_path / "home", LLM_USER_PATH=str(user_dir), OPENAI_API_KEY="sk-unused")
    llm = Path(sys.executable).with_name("llm")
    done = run([str(llm), "-m", "helexa-local", "-T", "llm_time", "What time is it?"], env=env, cwd=tmp_path)
    assert done.returncode == 0, f"llm failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "The tool said:" in done.stdout and "utc_time" in done.stdout, done.stdout
    first, second = stack.received()[0], stack.received()[-1]
    assert [t["function"]["name"] for t in first["tools"]] == ["llm_time"]
    assert second["messages"][-1]["role"] == "tool"
