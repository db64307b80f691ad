"""The pure rules of ``helexa acp``'s tools and framing, as tables."""

from __future__ import annotations

import asyncio
import time

import pytest

from helexa.acp import commands, tools
from helexa.acp.sessions import Session, SessionStore
from helexa.acp.tools import ToolError
from helexa.acp.transport import problem
from tests.conftest import alive


def test_confine_keeps_paths_inside_the_working_directory(tmp_path):
    cwd = tmp_path.resolve() / "work"
    (cwd / "sub").mkdir(parents=True)
    (cwd / "escape").symlink_to(tmp_path)
    assert tools.confine(cwd, "a.txt") == cwd / "a.txt"
    assert tools.confine(cwd, "sub/../b.txt") == cwd / "b.txt"
    assert tools.confine(cwd, str(cwd / "sub")) == cwd / "sub"
    assert tools.confine(cwd, ".") == cwd
    for bad in ("../x", "/etc/passwd", "escape/secret", "sub/../../x", "", "a\x00b", "~/x"):
        with pytest.raises(ToolError):
            tools.confine(cwd, bad)


@pytest.mark.parametrize(
    ("text", "old", "new", "expected"),
    [
        ("a b c", "b", "B", "a B c"),
        ("one\ntwo\n", "two\n", "2\n", "one\n2\n"),
        ("x", "y", "z", "not found"),
        ("aa", "a", "b", "occurs 2 times"),
        ("a", "", "b", "must not be empty"),
    ],
)
def test_apply_edit(text, old, new, expected):
    if expected.startswith(("not found", "occurs", "must")):
        with pytest.raises(ToolError, match=expected.split()[0]):
            tools.apply_edit(text, old, new)
    else:
        assert tools.apply_edit(text, old, new) == expected


def test_arguments_lines_and_caps():
    assert tools.parse_arguments('{"path": "a"}') == {"path": "a"}
    assert tools.parse_arguments("  ") == {}
    for bad in ("{", "[1]", '"s"'):
        with pytest.raises(ToolError):
            tools.parse_arguments(bad)
    with pytest.raises(ToolError, match="'path'"):
        tools.text_argument({"path": 3}, "path")
    text = "1\n2\n3\n4\n"
    assert tools.select_lines(text, 2, 2) == "2\n3\n"
    assert tools.select_lines(text, None, None) == text
    assert tools.select_lines(text, 3, None) == "3\n4\n"
    with pytest.raises(ToolError):
        tools.select_lines(text, "2", None)
    assert tools.cap("x" * 10, 20) == "x" * 10
    assert tools.cap("x" * 30, 20).startswith("x" * 20) and "10 more characters" in tools.cap("x" * 30, 20)
    assert {t["function"]["name"] for t in tools.offered(read_only=True)} == {"read_file", "list_files"}
    assert len(tools.offered(read_only=False)) == 5


async def test_run_shell_caps_output_and_kills_what_runs_too_long(tmp_path):
    code, out = await commands.run_shell("yes hello | head -c 100000; echo done >&2", tmp_path, 10, 1000)
    assert code == 0 and len(out) < 1100 and "more characters" in out
    started = time.monotonic()
    code, out = await commands.run_shell("echo started; sleep 30 & echo $! > pid; wait", tmp_path, 1, 1000)
    assert code is None and "started" in out and time.monotonic() - started < 5
    pid = int((tmp_path / "pid").read_text())
    for _ in range(50):  # the whole process group went, the background sleep too
        if not alive(pid):
            break
        await asyncio.sleep(0.1)
    assert not alive(pid)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"jsonrpc": "2.0", "id": 1, "method": "initialize"}, None),
        ({"jsonrpc": "2.0", "method": "session/cancel"}, None),
        ({"jsonrpc": "2.0", "id": 3, "result": {}}, None),
        ({"jsonrpc": "2.0", "id": 3, "error": {"code": 1}}, None),
        ([], -32600),
        (5, -32600),
        ({"id": True, "method": "x"}, -32600),
        ({"id": [1], "method": "x"}, -32600),
        ({"id": 1, "method": None}, -32600),
        ({"id": 1}, -32600),
        ({}, -32600),
    ],
)
def test_what_is_a_json_rpc_message(message, code):
    found = problem(message)
    assert (found[0] if found else None) == code


def test_the_store_keeps_sessions_and_ignores_what_is_not_one(tmp_path):
    store = SessionStore(tmp_path / "s")
    session = Session(id="a" * 32, cwd=tmp_path, model="m", messages=[{"role": "user", "content": "hi  there"}])
    session.touch()
    store.save(session)
    assert oct((tmp_path / "s").stat().st_mode & 0o777) == "0o700"
    loaded = store.load("a" * 32)
    assert loaded is not None and loaded.title == "hi there" and loaded.messages == session.messages
    assert store.load("../../etc/passwd") is None and store.load("b" * 32) is None
    (tmp_path / "s" / ("c" * 32 + ".json")).write_text("{not json")
    (tmp_path / "s" / ("d" * 32 + ".json")).write_text('{"id": "../x", "cwd": "/", "model": "m"}')
    assert [s.id for s in store.all()] == ["a" * 32]


def test_the_model_picker_puts_ready_models_first_and_leaves_out_what_cannot_run():
    from helexa.acp.present import model_choices

    cards = [
        {"id": "big", "status": "needs_download", "download_bytes": 5 * 2**30},
        {"id": "huge", "status": "unavailable", "unavailable_kind": "insufficient_vram"},
        {"id": "warm", "status": "loaded"},
        {"id": "cold", "status": "available"},
        {"id": "remote"},  # not helexa: no status
    ]
    assert model_choices(cards) == [
        ("warm", "loaded"),
        ("cold", "available"),
        ("big", "download 5.0 GiB first"),
        ("remote", None),
    ]
