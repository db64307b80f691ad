"""The first requests of Claude Code 2.1.331 and Codex 0.169.0, as captured from the real clients (texts cut to
40 characters, shapes kept), decode and translate: the clients' real traffic is the spec."""

from __future__ import annotations

import json

from helexa.translate.anthropic import decode_request, to_chat_request
from helexa.translate.responses import ToolSet, decode_responses_request, to_response
from helexa.translate.responses import to_chat_request as responses_to_chat
from helexa.translate.responses_stream import ResponsesStream
from tests.conftest import ROOT

CAPTURED = ROOT / "tests" / "fixtures" / "captured"


def captured(name: str) -> dict:
    return json.loads((CAPTURED / name).read_text())


def test_claude_code_first_request_translates():
    capture = captured("claude-code-2.1.331-messages.json")
    assert "context-management" in capture["headers"]["anthropic-beta"]
    raw = json.dumps(capture["body"]).encode()
    chat = to_chat_request(decode_request(raw), "qwen-coder")
    assert [m["role"] for m in chat["messages"]] == ["system", "user", "system"]  # the late system entry in place
    names = [t["function"]["name"] for t in chat["tools"]]
    assert "Read" in names and "Bash" in names and "DeferredToolPlaceholder" not in names
    assert len(names) == len(capture["body"]["tools"]) - 1
    assert chat["chat_template_kwargs"] == {"enable_thinking": True}  # thinking: adaptive
    assert chat["reasoning_effort"] == "high"  # output_config.effort
    assert chat["max_tokens"] == 32000 and chat["stream"] is True
    assert chat["stream_options"] == {"include_usage": True}
    assert chat["user"].startswith("{")  # metadata.user_id, a JSON string


def test_codex_first_request_translates_and_maps_namespace_calls_back():
    capture = captured("codex-0.169.0-responses.json")
    request = decode_responses_request(json.dumps(capture["body"]).encode())
    tools = ToolSet(request.tools)
    assert tools.dropped == ["web_search"]
    chat = responses_to_chat(request, "qwen-coder", tools)
    assert [m["role"] for m in chat["messages"]] == ["system", "system", "user", "user"]  # developer → system
    names = [t["function"]["name"] for t in chat["tools"]]
    namespace = next(t for t in capture["body"]["tools"] if t["type"] == "namespace")
    flat = [f"{namespace['name']}__{member['name']}" for member in namespace["tools"]]
    assert "exec_command" in names and set(flat) <= set(names)
    assert chat["parallel_tool_calls"] is True and chat["chat_template_kwargs"] == {"enable_thinking": True}

    member = namespace["tools"][0]["name"]
    call = {"id": "call_1", "type": "function", "function": {"name": flat[0], "arguments": "{}"}}
    answer = {"choices": [{"message": {"content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}]}
    item = to_response(answer, request, "qwen-coder", tools)["output"][0]
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", member, namespace["name"])
    streamed = ResponsesStream(request, "qwen-coder", tools)
    events = streamed.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, **call}]}}]})
    assert f'"name":"{member}","namespace":"{namespace["name"]}"'.encode() in events

    # the call comes back in the next turn's history with its namespace: the engine sees the flat name again
    history = {**capture["body"], "input": [*capture["body"]["input"], {**item, "type": "function_call"}]}
    again = responses_to_chat(decode_responses_request(json.dumps(history).encode()), "qwen-coder", tools)
    assert again["messages"][-1]["tool_calls"][0]["function"]["name"] == flat[0]
