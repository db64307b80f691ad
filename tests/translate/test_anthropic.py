"""Anthropic ↔ OpenAI translation: requests, responses and the exact streaming event sequence (pure)."""

from __future__ import annotations

import json

import msgspec
import pytest

from helexa.errors import InvalidRequest
from helexa.translate.anthropic import decode_count_request, decode_request, to_anthropic_message, to_chat_request
from helexa.translate.anthropic_stream import AnthropicStream

TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def req(**body) -> bytes:
    return msgspec.json.encode(
        {"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}], **body}
    )


def test_full_request_translation():
    body = req(
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather in Oslo? "},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call the tool.", "signature": "sig"},
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "12°C"}]},
                    {"type": "text", "text": "Thanks!"},
                ],
            },
        ],
        tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
        stop_sequences=["END"],
        temperature=0.2,
        top_p=0.9,
        top_k=40,
        metadata={"user_id": "u-1"},
        thinking={"type": "enabled", "budget_tokens": 1024},
        stream=True,
    )
    chat = to_chat_request(decode_request(body), "canonical")
    assert chat["model"] == "canonical"
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief.\n\nBe kind."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather in Oslo? "},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "I should call the tool.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "12°C"},
        {"role": "user", "content": "Thanks!"},
    ]
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {"name": "get_weather", "description": "Weather now", "parameters": TOOLS[0]["input_schema"]},
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    assert (chat["stop"], chat["temperature"], chat["top_p"], chat["top_k"], chat["user"]) == (
        ["END"],
        0.2,
        0.9,
        40,
        "u-1",
    )
    assert chat["chat_template_kwargs"] == {"enable_thinking": True}
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["max_tokens"] == 32


@pytest.mark.parametrize(("choice", "expected"), [("auto", "auto"), ("any", "required"), ("none", "none")])
def test_tool_choice_table(choice, expected):
    chat = to_chat_request(decode_request(req(tools=TOOLS, tool_choice={"type": choice})), "m")
    assert chat["tool_choice"] == expected


def test_tool_result_error_and_url_image():
    body = req(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "boom", "is_error": True},
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ],
            }
        ]
    )
    messages = to_chat_request(decode_request(body), "m")["messages"]
    assert messages[0] == {"role": "tool", "tool_call_id": "t", "content": "Error: boom"}
    assert messages[1]["content"] == [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]


@pytest.mark.parametrize(
    ("body", "field", "text"),
    [
        ({"model": "m", "messages": []}, "max_tokens", "Object missing required field `max_tokens`"),
        (None, "messages[0].role", "Invalid enum value 'bot'"),
        (None, "messages[0].content[0].type", "Invalid value 'video'"),
        (None, "tool_choice.name", "tool 'nope' is not in tools"),
        (None, "max_tokens", "must be at least 1"),
        (None, "tools.0.name", "a custom tool needs a name"),
    ],
)
def test_malformed_requests_name_the_field(body, field, text):
    variants = {
        "messages[0].role": req(messages=[{"role": "bot", "content": "x"}]),
        "messages[0].content[0].type": req(messages=[{"role": "user", "content": [{"type": "video", "url": "x"}]}]),
        "tool_choice.name": req(tools=TOOLS, tool_choice={"type": "tool", "name": "nope"}),
        "max_tokens": req(max_tokens=0),
        "tools.0.name": req(tools=[{"name": "", "input_schema": {}}]),
    }
    raw = msgspec.json.encode(body) if body is not None else variants[field]
    with pytest.raises(InvalidRequest) as info:
        decode_request(raw)
    message = info.value.message
    assert message.startswith(f"{field}: ") or (field == "max_tokens" and "max_tokens" in message)
    assert text.replace("`", "") in message.replace("`", "")


def test_count_tokens_request_needs_no_max_tokens():
    parsed = decode_count_request(msgspec.json.encode({"model": "m", "messages": [{"role": "user", "content": "x"}]}))
    assert parsed.model == "m"


CHAT = {
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": "Need weather.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    }
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7},
}


def test_response_translation():
    message = to_anthropic_message(CHAT, decode_request(req()), "m")
    assert message["type"] == "message" and message["role"] == "assistant" and message["id"].startswith("msg_")
    assert message["content"] == [
        {"type": "thinking", "thinking": "Need weather.", "signature": ""},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
    ]
    assert (message["stop_reason"], message["stop_sequence"]) == ("tool_use", None)
    assert message["usage"] == {
        "input_tokens": 11,
        "output_tokens": 7,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }


@pytest.mark.parametrize(
    ("finish", "extra", "expected"),
    [
        ("stop", {}, ("end_turn", None)),
        ("length", {}, ("max_tokens", None)),
        ("stop", {"stop_reason": "END"}, ("stop_sequence", "END")),
        ("stop", {"stop_reason": 2}, ("end_turn", None)),
    ],
)
def test_stop_reason_mapping(finish, extra, expected):
    chat = {"choices": [{"index": 0, "finish_reason": finish, "message": {"content": "x"}, **extra}]}
    message = to_anthropic_message(chat, decode_request(req(stop_sequences=["END"])), "m")
    assert (message["stop_reason"], message["stop_sequence"]) == expected


def parse(raw: bytes) -> list[dict]:
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        kind, data = block.split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert kind == f"event: {payload['type']}"
        events.append(payload)
    return events


def test_stream_event_sequence_is_exact():
    stream = AnthropicStream("m", [])
    base = {"object": "chat.completion.chunk"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "Think"}}]},
        {**base, "choices": [{"index": 0, "delta": {"reasoning_content": "ing."}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hi"}}]},
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
                        ]
                    },
                }
            ],
        },
        {
            **base,
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}],
        },
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}},
    ]
    raw = b"".join(stream.chunk(c) for c in chunks) + stream.finish() + stream.finish()
    events = parse(raw)
    assert [e["type"] for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    }
    assert events[2]["delta"] == {"type": "thinking_delta", "thinking": "Think"}
    assert events[5]["content_block"] == {"type": "text", "text": ""} and events[5]["index"] == 1
    assert events[6]["delta"] == {"type": "text_delta", "text": "Hi"}
    assert events[8]["content_block"] == {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert [e["delta"]["partial_json"] for e in events[9:11]] == ['{"a":', "1}"]
    assert events[12] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {
            "input_tokens": 3,
            "output_tokens": 9,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
        },
    }
    assert events[13] == {"type": "message_stop"}


def test_empty_stream_still_closes_the_message():
    events = parse(AnthropicStream("m", []).finish())
    assert [e["type"] for e in events] == ["message_start", "message_delta", "message_stop"]


def test_claude_code_fields_map_to_engine_settings():
    history = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t1"}, {"type": "text", "text": "x"}]},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "t2"}, {"type": "text", "text": "y"}]},
        {"role": "user", "content": "c"},
        {"role": "system", "content": "reminder"},
    ]
    edit = {"edits": [{"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 1}}]}
    chat = to_chat_request(
        decode_request(req(messages=history, context_management=edit, output_config={"effort": "max"})), "m"
    )
    assistants = [m for m in chat["messages"] if m["role"] == "assistant"]
    assert "reasoning_content" not in assistants[0] and assistants[1]["reasoning_content"] == "t2"
    assert chat["messages"][-1] == {"role": "system", "content": "reminder"}
    assert chat["reasoning_effort"] == "high"

    kept = to_chat_request(decode_request(req(messages=history, context_management={"edits": []})), "m")
    assert [m.get("reasoning_content") for m in kept["messages"] if m["role"] == "assistant"] == ["t1", "t2"]

    off = to_chat_request(decode_request(req(thinking={"type": "disabled"}, output_config={"effort": "low"})), "m")
    assert off["chat_template_kwargs"] == {"enable_thinking": False} and "reasoning_effort" not in off

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = to_chat_request(
        decode_request(req(output_config={"format": {"type": "json_schema", "schema": schema}})), "m"
    )
    assert structured["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}

    tools = [
        {"name": "f", "input_schema": {"type": "object"}},
        {"type": "web_search_20250305", "name": "web_search"},
        {"name": "later", "input_schema": {"type": "object"}, "defer_loading": True},
    ]
    offered = to_chat_request(decode_request(req(tools=tools)), "m")
    assert [t["function"]["name"] for t in offered["tools"]] == ["f"]
    only_server = to_chat_request(decode_request(req(tools=tools[1:], tool_choice={"type": "auto"})), "m")
    assert "tools" not in only_server and "tool_choice" not in only_server


def test_cached_prompt_tokens_are_cache_reads():
    usage = {"prompt_tokens": 100, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 96}}
    from helexa.translate.anthropic import anthropic_usage

    assert anthropic_usage(usage) == {
        "input_tokens": 4,
        "output_tokens": 5,
        "cache_read_input_tokens": 96,
        "cache_creation_input_tokens": 0,
    }
    assert anthropic_usage({"prompt_tokens": 3, "prompt_tokens_details": None})["cache_read_input_tokens"] == 0
