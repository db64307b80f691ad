"""The fields helexa reads are type-checked before a stream opens: a 400 in the dialect's envelope naming the
field, never a 200 stream that fails later (the report: ``"stream_options": "abc"`` with ``stream: true``
answered 200 and streamed)."""

from __future__ import annotations

import pytest

from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

DROP = object()  # leave the field out
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
OPENAI_CASES = [
    ("/v1/chat/completions", {"stream_options": "abc"}, "stream_options"),
    ("/v1/chat/completions", {"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ("/v1/chat/completions", {"stream": "yes"}, "stream"),
    ("/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("/v1/chat/completions", {"messages": ["hi"]}, "messages[0]"),
    ("/v1/chat/completions", {"messages": None}, "messages"),
    ("/v1/chat/completions", {"tools": {"name": "x"}}, "tools"),
    ("/v1/chat/completions", {"tools": [1]}, "tools[0]"),
    ("/v1/chat/completions", {"tool_choice": 3}, "tool_choice"),
    ("/v1/chat/completions", {"max_tokens": "100"}, "max_tokens"),
    ("/v1/chat/completions", {"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ("/v1/chat/completions", {"user": 7}, "user"),
    ("/v1/completions", {"messages": DROP, "prompt": 7}, "prompt"),
    ("/v1/completions", {"messages": DROP}, "prompt"),
    ("/v1/embeddings", {"stream": False, "input": {"a": 1}}, "input"),
]


@pytest.fixture
async def gateway(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, fakes = await fleet([a], models=[entry("m")])
    client.fake = fakes["a"]  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize(("path", "change", "param"), OPENAI_CASES)
async def test_openai_fields_of_the_wrong_type_are_a_400_naming_them(gateway, path, change, param):
    body = {k: v for k, v in {**CHAT, **change}.items() if v is not DROP}
    resp = await gateway.post(path, json=body)
    assert resp.status == 400 and resp.content_type == "application/json", await resp.text()
    error = (await resp.json())["error"]
    assert error["param"] == param and param.split("[")[0].split(".")[0] in error["message"], error
    assert gateway.fake.served == []


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/messages", {**CHAT, "max_tokens": "5"}, "max_tokens"),
        ("/v1/messages", {**CHAT, "max_tokens": 5, "messages": "hi"}, "messages"),
        ("/v1/messages", {**CHAT, "max_tokens": 5, "tools": [{"name": 1}]}, "tools"),
        ("/v1/messages", {**CHAT, "max_tokens": 5, "tool_choice": "auto"}, "tool_choice"),
        ("/v1/responses", {"model": "m", "input": 5, "stream": True}, "input"),
        ("/v1/responses", {"model": "m", "input": "hi", "stream": True, "tools": "x"}, "tools"),
        ("/v1/responses", {"model": "m", "input": "hi", "stream": True, "max_output_tokens": "9"}, "max_output_tokens"),
    ],
)
async def test_other_dialects_check_before_the_stream_opens(gateway, path, body, field):
    resp = await gateway.post(path, json=body)
    assert resp.status == 400 and resp.content_type == "application/json", await resp.text()
    text = await resp.text()
    assert field in text
    assert gateway.fake.served == []


async def test_well_typed_requests_still_stream(gateway):
    ok = {**CHAT, "stream_options": {"include_usage": True}, "tools": [], "tool_choice": "none", "max_tokens": 5}
    resp = await gateway.post("/v1/chat/completions", json=ok)
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert b"[DONE]" in await resp.read()
