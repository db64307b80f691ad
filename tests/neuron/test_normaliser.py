"""The stream normaliser: markers split anywhere, malformed tool calls, pass-through, whole responses."""

from __future__ import annotations

import json

import msgspec
import pytest

from helexa.neuron.normaliser import ChatNormaliser, MarkerSplitter, Piece, SSENormaliser


def split_all(text: str, size: int) -> list[Piece]:
    splitter = MarkerSplitter()
    pieces: list[Piece] = []
    for i in range(0, len(text), size):
        pieces += splitter.feed(text[i : i + size])
    pieces += splitter.finish()
    # merge neighbours of the same kind, as a client concatenating deltas would
    merged: list[Piece] = []
    for p in pieces:
        if merged and merged[-1].kind == p.kind and p.kind != "tool":
            merged[-1] = Piece(p.kind, merged[-1].text + p.text)
        else:
            merged.append(p)
    return merged


TEXT = (
    'Hi <think>let me think</think>Sure.<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)
EXPECTED = [
    Piece("content", "Hi "),
    Piece("reasoning", "let me think"),
    Piece("content", "Sure."),
    Piece("tool", name="get_weather", arguments='{"city":"Oslo"}'),
]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 1000])
def test_markers_split_at_any_boundary(size):
    assert split_all(TEXT, size) == EXPECTED


def test_text_without_markers_passes():
    assert split_all("a < b and c > d", 1) == [Piece("content", "a < b and c > d")]


def test_prefix_of_a_marker_that_never_completes_is_released():
    assert split_all("x <thin", 2) == [Piece("content", "x <thin")]


def test_malformed_tool_call_falls_back_to_its_text():
    text = "<tool_call>{not json}</tool_call> after"
    assert split_all(text, 3) == [Piece("content", "<tool_call>{not json}</tool_call> after")]


def test_tool_call_without_name_falls_back():
    text = '<tool_call>{"arguments": {}}</tool_call>'
    assert split_all(text, 4) == [Piece("content", text)]


def test_unterminated_tool_call_is_text_and_unterminated_reasoning_is_reasoning():
    assert split_all('<tool_call>{"name": "x"', 3) == [Piece("content", '<tool_call>{"name": "x"')]
    assert split_all("<think>still thinking", 3) == [Piece("reasoning", "still thinking")]


def test_string_arguments_and_parameters_key():
    assert split_all('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>', 5) == [
        Piece("tool", name="f", arguments='{"a": 1}')
    ]
    assert split_all('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>', 5) == [
        Piece("tool", name="f", arguments='{"a":1}')
    ]


# ------------------------------------------------------------------------------------------------ SSE level


def sse_stream(text: str, size: int, *, finish: str = "stop", usage: bool = True) -> bytes:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for i in range(0, len(text), size):
        events.append(
            {**base, "choices": [{"index": 0, "delta": {"content": text[i : i + size]}, "finish_reason": None}]}
        )
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        events.append(
            {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}
        )
    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return body + b"data: [DONE]\n\n"


def run_sse(raw: bytes, byte_size: int) -> list[dict | str]:
    norm = SSENormaliser()
    out = b""
    for i in range(0, len(raw), byte_size):
        out += norm.feed(raw[i : i + byte_size])
    out += norm.close()
    events = []
    for event in out.split(b"\n\n"):
        if not event:
            continue
        assert event.startswith(b"data: ")
        payload = event[6:]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def collect(events: list) -> dict:
    content, reasoning, calls, finish, usage = "", "", [], None, None
    for e in events:
        if e == "[DONE]":
            continue
        usage = e.get("usage") or usage
        for c in e["choices"]:
            d = c["delta"]
            content += d.get("content") or ""
            reasoning += d.get("reasoning_content") or ""
            calls += d.get("tool_calls") or []
            finish = c["finish_reason"] or finish
    return {"content": content, "reasoning": reasoning, "calls": calls, "finish": finish, "usage": usage}


@pytest.mark.parametrize(("text_size", "byte_size"), [(1, 1), (2, 7), (4, 64), (50, 3), (1000, 100000)])
def test_sse_stream_is_normalised(text_size, byte_size):
    events = run_sse(sse_stream(TEXT, text_size), byte_size)
    assert events[-1] == "[DONE]"
    got = collect(events)
    assert got["content"] == "Hi Sure."
    assert got["reasoning"] == "let me think"
    assert [c["function"] for c in got["calls"]] == [{"name": "get_weather", "arguments": '{"city":"Oslo"}'}]
    assert (
        got["calls"][0]["index"] == 0
        and got["calls"][0]["id"].startswith("call_")
        and got["calls"][0]["type"] == "function"
    )
    assert got["finish"] == "tool_calls"
    assert got["usage"] == {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    first = next(e for e in events if e != "[DONE]")
    assert first["choices"][0]["delta"].get("role") == "assistant"


def test_plain_stream_is_forwarded_byte_for_byte():
    raw = sse_stream("Hello there, no markers at all.", 4)
    norm = SSENormaliser()
    assert norm.feed(raw) + norm.close() == raw


def test_structured_output_passes_unchanged():
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    events = [
        {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "<think>hmm"}, "finish_reason": None}]},
        {
            **base,
            "choices": [{"index": 0, "delta": {"content": "<tool_call>literal</tool_call>"}, "finish_reason": None}],
        },
    ]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    out = run_sse(raw, 5)
    assert out == events


def test_malformed_tool_call_in_stream_becomes_text():
    events = run_sse(sse_stream("<tool_call>{broken</tool_call>ok", 3), 10)
    got = collect(events)
    assert got["content"] == "<tool_call>{broken</tool_call>ok"
    assert got["calls"] == []
    assert got["finish"] == "stop"


def test_stream_that_ends_without_finish_releases_held_text():
    raw = sse_stream("tail <thi", 2, usage=False).replace(b'"finish_reason": "stop"', b'"finish_reason": null')
    got = collect(run_sse(raw, 8))
    assert got["content"] == "tail <thi"


def test_non_streaming_completion():
    body = {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    out = ChatNormaliser().completion(body)
    message = out["choices"][0]["message"]
    assert message["content"] == "Hi Sure."
    assert message["reasoning_content"] == "let me think"
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}
    assert message["tool_calls"][0]["type"] == "function"
    assert out["choices"][0]["finish_reason"] == "tool_calls"
    assert out["usage"] == body["usage"]


def test_non_streaming_only_tool_call_has_null_content():
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": '<tool_call>{"name": "f"}</tool_call>'},
                "finish_reason": "stop",
            }
        ]
    }
    message = ChatNormaliser().completion(body)["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}


def test_non_streaming_structured_message_is_untouched():
    body = {
        "choices": [
            {"index": 0, "message": {"content": "<think>x</think>", "reasoning_content": "y"}, "finish_reason": "stop"}
        ]
    }
    assert ChatNormaliser().completion(body) == body


def test_output_chunks_are_valid_openai_chunks():
    for event in run_sse(sse_stream(TEXT, 3), 5):
        if event == "[DONE]":
            continue
        assert event["object"] == "chat.completion.chunk"
        assert len(event["choices"]) <= 1
        msgspec.json.encode(event)
