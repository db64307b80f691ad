"""One ``helexa acp`` turn against a real engine: the demo model (SmolLM2-135M-Instruct) on llama.cpp."""

from __future__ import annotations

from acp import text_block

from tests.acp_agent.conftest import EDITOR_CAPABILITIES, Editor, Stack
from tests.conftest import engine_ports


async def test_one_turn_with_llamacpp(demo_fleet, tmp_path):
    url = demo_fleet(api_keys=["sk-acp"], admin_keys=["sk-admin"], port_range=str(engine_ports()))
    (tmp_path / "work").mkdir()
    stack = Stack(url=url, workdir=tmp_path / "work", secret="", records={}, engines={})
    editor = Editor(permission="reject_once")  # a small model may try a tool: nothing changes here
    args = ("--api-key-env", "MY_KEY", "--max-tokens", "48")
    async with stack.agent(editor, *args, env={"MY_KEY": "sk-acp"}) as conn:
        await conn.initialize(protocol_version=1, client_capabilities=EDITOR_CAPABILITIES)
        session = await conn.new_session(cwd=str(stack.workdir), mcp_servers=[])
        model = next(o for o in session.config_options if o.id == "model")
        assert model.current_value == "smollm2-135m-instruct"  # the loaded one
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("Hello! Who are you?")])
    print("stop:", done.stop_reason, "answer:", editor.text(), "tool calls:", [c.title for c in editor.of("tool_call")])
    assert done.stop_reason in ("end_turn", "max_tokens")
    assert editor.text().strip() or editor.of("tool_call"), "the model said nothing"
