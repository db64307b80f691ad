"""``helexa acp`` with a real ACP client against ``helexa run --role both`` and scripted engines."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from acp import RequestError, text_block
from acp.schema import ClientCapabilities, FileSystemCapabilities
from aiohttp import web

from tests.acp_agent.conftest import CODER, EDITOR_CAPABILITIES, OTHER, OTHER_REPLY, Editor, Stack
from tests.conftest import free_port, until

READ_THEN_WRITE = [
    {
        "think": "The notes will say.",
        "text": "Reading the notes.",
        "tool_call": {"name": "read_file", "arguments": {"path": "notes.txt"}},
    },
    {
        "text": "They say: {tool_result} Saving a copy.",
        "tool_call": {"name": "write_file", "arguments": {"path": "out/copy.txt", "content": "copied by the agent\n"}},
    },
    {"text": "Done: {tool_result}"},
]


async def open_session(conn, workdir, capabilities=EDITOR_CAPABILITIES):
    init = await conn.initialize(protocol_version=1, client_capabilities=capabilities)
    assert init.protocol_version == 1 and init.agent_info.name == "helexa"
    return await conn.new_session(cwd=str(workdir), mcp_servers=[])


async def test_a_turn_reads_asks_to_write_writes_and_answers(acp_stack):
    stack = acp_stack(READ_THEN_WRITE)
    editor = Editor()
    async with stack.agent(editor, "--model", CODER) as conn:
        session = await open_session(conn, stack.workdir)
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("Copy my notes.")])

    assert done.stop_reason == "end_turn"
    # the answer streamed: reasoning as thought chunks (the neuron turned <think> into reasoning_content)
    assert editor.text("agent_thought_chunk") == "The notes will say."
    answer = editor.text()
    assert "Reading the notes." in answer and stack.secret in answer and "Done: Wrote out/copy.txt" in answer
    assert len(editor.of("agent_message_chunk")) > 3  # in pieces, as the engine sent them

    calls = editor.of("tool_call")
    assert [(c.kind, c.title) for c in calls] == [("read", "Read notes.txt"), ("edit", "Write out/copy.txt")]
    final = {u.tool_call_id: u.status for u in editor.of("tool_call_update")}
    assert set(final.values()) == {"completed"}
    # only the write asked; through the editor's file system
    assert len(editor.permissions) == 1
    asked, options = editor.permissions[0]
    assert asked.title == "Write out/copy.txt" and "allow_once" in options and "reject_always" in options
    assert editor.reads == [str(stack.workdir / "notes.txt")]
    assert editor.writes == [str(stack.workdir / "out" / "copy.txt")]
    assert (stack.workdir / "out" / "copy.txt").read_text() == "copied by the agent\n"
    diff = [c for u in editor.of("tool_call_update") for c in (u.content or []) if c.type == "diff"]
    assert diff and diff[0].new_text == "copied by the agent\n" and diff[0].old_text is None

    requests = stack.received()
    assert len(requests) == 3
    assert requests[0]["model"] == CODER and requests[0]["stream"] is True
    assert {t["function"]["name"] for t in requests[0]["tools"]} >= {"read_file", "write_file", "run_command"}
    second = requests[1]["messages"]
    assert second[0]["role"] == "system" and str(stack.workdir) in second[0]["content"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "read_file"
    assert second[-1]["role"] == "tool" and stack.secret in second[-1]["content"]


async def test_a_refused_permission_writes_nothing_and_tells_the_model(acp_stack):
    stack = acp_stack(READ_THEN_WRITE)
    editor = Editor(permission="reject_once")
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("Copy my notes.")])
    assert done.stop_reason == "end_turn"
    assert not (stack.workdir / "out").exists() and editor.writes == []
    statuses = [u.status for u in editor.of("tool_call_update") if u.status in ("completed", "failed")]
    assert statuses == ["completed", "failed"]
    last = stack.received()[-1]["messages"][-1]
    assert last["role"] == "tool" and "refused permission" in last["content"]
    assert "Done: The user refused permission" in editor.text()


async def test_always_allow_is_remembered_for_the_session(acp_stack):
    two_writes = [
        {"tool_call": {"name": "write_file", "arguments": {"path": "a.txt", "content": "a"}}},
        {"tool_call": {"name": "edit_file", "arguments": {"path": "a.txt", "old_text": "a", "new_text": "b"}}},
        {"tool_call": {"name": "write_file", "arguments": {"path": "c.txt", "content": "c"}}},
        {"text": "ok"},
    ]
    stack = acp_stack(two_writes)
    editor = Editor(permission="allow_always")
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        await conn.prompt(session_id=session.session_id, prompt=[text_block("go")])
    # write_file asked once (then always), edit_file once
    assert [p[0].title for p in editor.permissions] == ["Write a.txt", "Edit a.txt"]
    assert (stack.workdir / "a.txt").read_text() == "b" and (stack.workdir / "c.txt").read_text() == "c"


async def test_cancel_mid_stream_stops_the_engine_request(acp_stack):
    slow = [{"text": "word " * 60, "chunk_delay": 0.2}]
    stack = acp_stack(slow)
    editor = Editor()
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        turn = asyncio.create_task(conn.prompt(session_id=session.session_id, prompt=[text_block("talk")]))
        for _ in range(100):  # until the answer is streaming
            if editor.of("agent_message_chunk"):
                break
            await asyncio.sleep(0.05)
        assert editor.of("agent_message_chunk"), "the answer never started"
        await conn.cancel(session_id=session.session_id)
        done = await asyncio.wait_for(turn, 10)
        assert done.stop_reason == "cancelled"
        for _ in range(100):
            if stack.engine_stats()["aborted"] >= 1:
                break
            await asyncio.sleep(0.05)
        assert stack.engine_stats()["aborted"] == 1, "the engine never saw its request aborted"
        assert len(editor.text()) < len("word " * 60)
        # the session goes on after a cancel
        chunks = len(editor.of("agent_message_chunk"))
        again = asyncio.create_task(conn.prompt(session_id=session.session_id, prompt=[text_block("again")]))
        await until(lambda: len(editor.of("agent_message_chunk")) > chunks, 10, "the second answer started")
        await conn.cancel(session_id=session.session_id)
        assert (await asyncio.wait_for(again, 10)).stop_reason == "cancelled"
    history = stack.received()[-1]["messages"]  # the second turn's request: the first one's partial answer kept
    assert [m["role"] for m in history][-3:] == ["user", "assistant", "user"]
    assert history[-1]["content"] == "again" and ("word " * 60).startswith(history[-2]["content"])


async def test_models_come_from_the_gateway_and_can_change_mid_session(acp_stack):
    stack = acp_stack([{"text": "I am the coder."}])
    editor = Editor()
    async with stack.agent(editor, "--model", CODER) as conn:
        session = await open_session(conn, stack.workdir)
        model = next(o for o in session.config_options if o.id == "model")
        assert model.category == "model" and model.current_value == CODER
        assert {o.value for o in model.options} == {CODER, OTHER}
        first = await conn.prompt(session_id=session.session_id, prompt=[text_block("who are you?")])
        assert first.stop_reason == "end_turn" and editor.text() == "I am the coder."

        changed = await conn.set_config_option(config_id="model", session_id=session.session_id, value=OTHER)
        assert next(o for o in changed.config_options if o.id == "model").current_value == OTHER
        editor.updates.clear()
        await conn.prompt(session_id=session.session_id, prompt=[text_block("and now?")])
        assert editor.text() == OTHER_REPLY
        # the other model got the whole conversation
        history = stack.received(OTHER)[-1]["messages"]
        assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
        assert history[2]["content"] == "I am the coder."

        with pytest.raises(RequestError) as bad:
            await conn.set_config_option(config_id="model", session_id=session.session_id, value="no-such-model")
        assert bad.value.code == -32602 and "no-such-model" in str(bad.value.data)


async def test_plan_mode_offers_read_only_tools_and_refuses_changes(acp_stack):
    stack = acp_stack(
        [
            {"tool_call": {"name": "write_file", "arguments": {"path": "x.txt", "content": "x"}}},
            {"tool_call": {"name": "read_file", "arguments": {"path": "../outside.txt"}}},
            {"text": "Plan: 1. {tool_result}"},
        ]
    )
    (stack.workdir.parent / "outside.txt").write_text("not for the agent")
    editor = Editor()
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        await conn.set_session_mode(session_id=session.session_id, mode_id="plan")
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("plan it")])
    assert done.stop_reason == "end_turn"
    offered = {t["function"]["name"] for t in stack.received()[0]["tools"]}
    assert offered == {"read_file", "list_files"}
    assert "plan mode" in stack.received()[0]["messages"][0]["content"]
    assert editor.permissions == [] and not (stack.workdir / "x.txt").exists()
    results = [m["content"] for m in stack.received()[-1]["messages"] if m["role"] == "tool"]
    assert "not available in plan mode" in results[0]
    assert "outside the session's working directory" in results[1] and editor.reads == []
    assert "not for the agent" not in editor.text()


async def test_without_editor_file_access_the_agent_uses_the_disk_and_runs_commands(acp_stack):
    stack = acp_stack(
        [
            {"tool_call": {"name": "run_command", "arguments": {"command": "cat notes.txt; echo oops >&2; exit 3"}}},
            {"text": "Result: {tool_result}"},
        ]
    )
    editor = Editor()
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir, capabilities=None)
        await conn.prompt(session_id=session.session_id, prompt=[text_block("run it")])
    assert [p[0].title for p in editor.permissions] == ["Run `cat notes.txt; echo oops >&2; exit 3`"]
    result = next(m["content"] for m in stack.received()[-1]["messages"] if m["role"] == "tool")
    assert result.startswith("exit code 3\n") and stack.secret in result and "oops" in result
    assert stack.secret in editor.text()


async def test_sessions_resume_after_a_restart(acp_stack, tmp_path):
    stack = acp_stack([{"text": "Noted."}])
    store = tmp_path / "sessions"
    editor = Editor()
    async with stack.agent(editor, "--sessions-dir", str(store)) as conn:
        init = await conn.initialize(protocol_version=1, client_capabilities=EDITOR_CAPABILITIES)
        assert init.agent_capabilities.load_session is True
        session = await conn.new_session(cwd=str(stack.workdir), mcp_servers=[])
        await conn.prompt(session_id=session.session_id, prompt=[text_block("Remember the number 42.")])
    editor = Editor()
    async with stack.agent(editor, "--sessions-dir", str(store)) as conn:
        await conn.initialize(protocol_version=1, client_capabilities=EDITOR_CAPABILITIES)
        listed = await conn.list_sessions()
        assert [s.session_id for s in listed.sessions] == [session.session_id]
        assert listed.sessions[0].title == "Remember the number 42."
        await conn.load_session(cwd=str(stack.workdir), session_id=session.session_id, mcp_servers=[])
        assert editor.text("user_message_chunk") == "Remember the number 42." and editor.text() == "Noted."
        await conn.prompt(session_id=session.session_id, prompt=[text_block("Which number?")])
        with pytest.raises(RequestError) as missing:
            await conn.load_session(cwd=str(stack.workdir), session_id="0" * 32, mcp_servers=[])
        assert missing.value.code == -32002
    history = stack.received()[-1]["messages"]
    assert [m["content"] for m in history[1:]] == ["Remember the number 42.", "Noted.", "Which number?"]


PROMPT_NOPE = b'{"sessionId": "nope", "prompt": []}'
RELATIVE_CWD = b'{"cwd": "relative/dir", "mcpServers": []}'


async def test_malformed_json_rpc_gets_errors_and_the_agent_keeps_serving(acp_stack):
    """Raw lines on the agent's stdin: each bad one is answered with a JSON-RPC error, then a good one works."""
    stack = acp_stack([{"text": "fine"}])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "helexa", "acp", "--url", stack.url,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    async def ask(line: bytes) -> dict:
        proc.stdin.write(line + b"\n")
        await proc.stdin.drain()
        return json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))

    try:
        cases = [
            (b"this is not json", None, -32700),
            (b'{"jsonrpc": "2.0", "id": 1, "method": ', None, -32700),
            (b"[1, 2, 3]", None, -32600),
            (b'"a string"', None, -32600),
            (b'{"jsonrpc": "2.0", "id": 2, "method": 5}', 2, -32600),
            (b'{"jsonrpc": "2.0", "id": {"x": 1}, "method": "initialize"}', None, -32600),
            (b'{"jsonrpc": "2.0", "id": 3, "method": "no/such/method", "params": {}}', 3, -32601),
            (b'{"jsonrpc": "2.0", "id": 4, "method": "session/new", "params": {"mcpServers": []}}', 4, -32602),
            (b'{"jsonrpc": "2.0", "id": 5, "method": "session/prompt", "params": []}', 5, -32602),
            (b'{"jsonrpc": "2.0", "id": 6, "method": "session/prompt", "params": ' + PROMPT_NOPE + b"}", 6, -32002),
            (b'{"jsonrpc": "2.0", "id": 7, "method": "session/new", "params": ' + RELATIVE_CWD + b"}", 7, -32602),
            ('{"jsonrpc": "2.0", "id": 8, "method": "\u00e9\\u0000"}'.encode(), 8, -32601),
        ]  # fmt: skip
        for line, answer_id, code in cases:
            answer = await ask(line)
            assert answer["id"] == answer_id and answer.get("error", {}).get("code") == code, (line, answer)
            assert answer["error"]["message"]
        ok = await ask(b'{"jsonrpc": "2.0", "id": 9, "method": "initialize", "params": {"protocolVersion": 1}}')
        assert ok["id"] == 9 and ok["result"]["protocolVersion"] == 1
        assert proc.returncode is None
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0  # the end of input ends the agent cleanly


async def test_an_unreachable_or_refusing_endpoint_is_a_clear_error(tmp_path, aiohttp_server):
    async def refuse(request):
        error = {"message": "a key is needed", "type": "authentication_error", "code": "invalid_api_key"}
        return web.json_response({"error": error}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", refuse)
    server = await aiohttp_server(app)
    for url, expected in ((f"http://127.0.0.1:{free_port()}", "cannot reach"), (str(server.make_url("")), "401")):
        stack = Stack(url=url, workdir=tmp_path, secret="", records={}, engines={})
        async with stack.agent(Editor()) as conn:
            await conn.initialize(protocol_version=1)
            with pytest.raises(RequestError) as failed:
                await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
            message = failed.value.data["details"]
            assert expected in message, message
            if expected == "401":
                assert "a key is needed" in message and "--api-key-env" in message
            else:
                assert "helexa run --role both" in message


async def test_an_error_in_the_middle_of_an_answer_fails_the_prompt_with_its_message(tmp_path, aiohttp_server):
    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "m", "status": "loaded"}]})

    async def chat(request):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        delta = {"choices": [{"index": 0, "delta": {"content": "Hal"}, "finish_reason": None}]}
        await resp.write(b"data: " + json.dumps(delta).encode() + b"\n\n")
        await resp.write(b'data: {"error": {"message": "the engine went away", "type": "upstream_error"}}\n\n')
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    stack = Stack(url=str(server.make_url("/v1")), workdir=tmp_path, secret="", records={}, engines={})
    editor = Editor()
    async with stack.agent(editor) as conn:
        await conn.initialize(protocol_version=1)
        session = await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        for _ in range(2):  # and the session is still there afterwards
            with pytest.raises(RequestError) as failed:
                await conn.prompt(session_id=session.session_id, prompt=[text_block("hi")])
            assert "the engine went away" in failed.value.data["details"]
    assert editor.text() == "HalHal"


async def test_one_turn_runs_at_a_time_in_a_session(acp_stack):
    stack = acp_stack([{"text": "word " * 20, "chunk_delay": 0.05}])
    editor = Editor()
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        first = asyncio.create_task(conn.prompt(session_id=session.session_id, prompt=[text_block("slow")]))
        await until(lambda: editor.of("agent_message_chunk"), 10, "the first answer started")
        with pytest.raises(RequestError) as busy:  # a second prompt while the first streams
            await conn.prompt(session_id=session.session_id, prompt=[text_block("again")])
        assert "already running" in busy.value.data["details"]
        assert (await asyncio.wait_for(first, 10)).stop_reason == "end_turn"
        assert editor.text() == "word " * 20


async def test_the_editor_cancelling_a_permission_request_cancels_the_turn(acp_stack):
    stack = acp_stack([{"tool_call": {"name": "write_file", "arguments": {"path": "x.txt", "content": "x"}}}])
    editor = Editor(permission="cancelled")
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("write")])
    assert done.stop_reason == "cancelled" and len(editor.permissions) == 1
    assert not (stack.workdir / "x.txt").exists()


async def test_commands_run_in_the_editors_terminal_when_it_has_one(acp_stack):
    stack = acp_stack(
        [
            {"tool_call": {"name": "run_command", "arguments": {"command": "cat notes.txt; exit 3"}}},
            {"tool_call": {"name": "run_command", "arguments": {"command": "sleep 30"}}},
            {"text": "Result: {tool_result}"},
        ]
    )
    editor = Editor(permission="allow_always")
    capabilities = ClientCapabilities(fs=FileSystemCapabilities(), terminal=True)
    async with stack.agent(editor, "--command-timeout", "1", env={"HELEXA_API_KEY": "sk-x"}) as conn:
        session = await open_session(conn, stack.workdir, capabilities=capabilities)
        await conn.prompt(session_id=session.session_id, prompt=[text_block("run it")])
    created = [c for c in editor.terminal_calls if c[0] == "create"]
    command, args, cwd = created[0][1]
    assert (command, args[:2], args[-3:], cwd) == (
        "/usr/bin/env",
        ["-u", "HELEXA_API_KEY"],  # helexa's key never reaches a command, in the editor's terminal neither
        ["/bin/sh", "-c", "cat notes.txt; exit 3"],
        str(stack.workdir),
    )
    results = [m["content"] for m in stack.received()[-1]["messages"] if m["role"] == "tool"]
    assert results[0].startswith("exit code 3\n") and stack.secret in results[0]
    assert results[1].startswith("timed out after 1 s")
    # the terminal is shown in the tool call, killed when it ran too long, released every time
    refs = [c.terminal_id for u in editor.of("tool_call_update") for c in (u.content or []) if c.type == "terminal"]
    assert list(dict.fromkeys(refs)) == ["term-0", "term-1"]
    assert [c for c in editor.terminal_calls if c[0] == "release"] == [("release", "term-0"), ("release", "term-1")]
    assert ("kill", "term-1") in editor.terminal_calls
    assert all(proc.returncode is not None for proc in editor.terminals.values())


def test_a_session_replayed_from_a_file_works_too(tmp_path):
    """``helexa acp < in.jsonl > out.jsonl``: regular files, which asyncio's pipe transports refuse."""
    (tmp_path / "in.jsonl").write_text(
        '{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": 1}}\nnot json\n'
    )
    with (tmp_path / "in.jsonl").open("rb") as stdin, (tmp_path / "out.jsonl").open("wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "helexa", "acp", "--url", f"http://127.0.0.1:{free_port()}"],
            stdin=stdin,
            stdout=stdout,
            stderr=subprocess.PIPE,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    answers = {a["id"]: a for a in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert answers[1]["result"]["agentInfo"]["name"] == "helexa"
    assert answers[None]["error"]["code"] == -32700


async def test_bad_options_and_bad_tool_calls_get_messages_that_say_what_to_fix(acp_stack):
    stack = acp_stack(
        [
            {"tool_call": {"name": "delete_everything", "arguments": {}}},
            {"tool_call": {"name": "edit_file", "arguments": {"path": "notes.txt", "old_text": "no", "new_text": "x"}}},
            {"tool_call": {"name": "read_file", "arguments": {"path": 42}}},
            {"text": "ok"},
        ]
    )  # fmt: skip
    editor = Editor()
    async with stack.agent(editor) as conn:
        session = await open_session(conn, stack.workdir)
        with pytest.raises(RequestError) as bad_mode:
            await conn.set_session_mode(session_id=session.session_id, mode_id="yolo")
        assert bad_mode.value.code == -32602 and "the modes are code, plan" in bad_mode.value.data["details"]
        with pytest.raises(RequestError) as bad_option:
            await conn.set_config_option(config_id="temperature", session_id=session.session_id, value="hot")
        assert bad_option.value.code == -32602 and "the options are model and mode" in bad_option.value.data["details"]
        done = await conn.prompt(session_id=session.session_id, prompt=[text_block("go")])
    assert done.stop_reason == "end_turn"
    results = [m["content"] for m in stack.received()[-1]["messages"] if m["role"] == "tool"]
    assert results[0].startswith("Error: there is no tool 'delete_everything'; the tools are read_file")
    assert results[1] == "Error: old_text was not found in the file; read the file and copy the text exactly"
    assert results[2] == "Error: argument 'path' is required and must be a string"
    final = {u.tool_call_id: u.status for u in editor.of("tool_call_update") if u.status}
    assert list(final.values()) == ["failed", "failed", "failed"]
    assert stack.secret in (stack.workdir / "notes.txt").read_text()  # the failed edit changed nothing


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ([], "offers no models"),
        ([{"id": "huge", "status": "unavailable"}], "can run there (all unavailable)"),
    ],
)
async def test_an_endpoint_without_a_usable_model_is_a_clear_error(tmp_path, aiohttp_server, cards, expected):
    async def models(request):
        return web.json_response({"object": "list", "data": cards})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    server = await aiohttp_server(app)
    stack = Stack(url=str(server.make_url("")), workdir=tmp_path, secret="", records={}, engines={})
    async with stack.agent(Editor()) as conn:
        await conn.initialize(protocol_version=1)
        with pytest.raises(RequestError) as failed:
            await conn.new_session(cwd=str(tmp_path), mcp_servers=[])
        assert failed.value.code == -32603 and expected in failed.value.data["details"]
        with pytest.raises(RequestError) as unknown:  # no session was made
            await conn.prompt(session_id="f" * 32, prompt=[text_block("hi")])
        assert unknown.value.code == -32002


def still_there(workdir: Path, *pid_files: str) -> list[str]:
    """The pid files whose process still exists (running or a zombie)."""
    return [name for name in pid_files if Path(f"/proc/{int((workdir / name).read_text())}").exists()]


async def test_commands_see_no_secrets_are_shown_whole_and_end_with_their_turn(acp_stack):
    """The report's findings: ``echo $HELEXA_API_KEY`` printed the key to the model, the permission prompt showed
    200 characters of a command, and a ``setsid … &`` child outlived the turn."""
    long = "echo " + "x" * 300 + " > long.txt"
    spawn = (
        "setsid sleep 300 >/dev/null 2>&1 & echo $! > escaped.pid; "
        "sleep 300 >/dev/null 2>&1 & echo $! > background.pid; "
        "env -i sleep 300 >/dev/null 2>&1 & echo $! > no-env.pid"
    )
    show = "echo key=$HELEXA_API_KEY token=$MY_SERVICE_TOKEN kept=$KEPT_API_KEY path=${PATH:+set}"
    stack = acp_stack(
        [
            {"tool_call": {"name": "run_command", "arguments": {"command": show}}},
            {"tool_call": {"name": "run_command", "arguments": {"command": long}}},
            {"tool_call": {"name": "run_command", "arguments": {"command": "true " + "x" * 5000}}},
            {"tool_call": {"name": "run_command", "arguments": {"command": spawn}}},
            {"text": "Done: {tool_result}"},
        ]
    )
    editor = Editor()
    env = {"HELEXA_API_KEY": "sk-helexa-secret", "MY_SERVICE_TOKEN": "tok-secret", "KEPT_API_KEY": "kept-value"}
    async with stack.agent(editor, "--keep-env", "KEPT_API_KEY", env=env) as conn:
        session = await open_session(conn, stack.workdir, capabilities=None)
        await conn.prompt(session_id=session.session_id, prompt=[text_block("run them")])
        # the turn is over: nothing it started runs (or waits as a zombie), while the agent itself goes on
        assert still_there(stack.workdir, "escaped.pid", "background.pid", "no-env.pid") == []
    results = [m["content"] for m in stack.received()[-1]["messages"] if m["role"] == "tool"]
    assert results[0] == "exit code 0\nkey= token= kept=kept-value path=set\n"
    assert "at most 4000" in results[2] and "write_file" in results[2]
    asked = [p[0] for p in editor.permissions]
    assert len(asked) == 3  # the overlong command was refused before anyone was asked
    assert asked[1].content[0].content.text == long and asked[1].title.endswith("(whole command below)")
