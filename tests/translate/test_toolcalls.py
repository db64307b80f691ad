"""The exact rule for bare-JSON tool calls, and the normaliser applying it to streams and whole answers."""

from __future__ import annotations

import json

import pytest

from helexa.neuron.normaliser import ChatNormaliser, SSENormaliser
from helexa.translate.toolcalls import bare_tool_calls, may_become_call, strip_fence
from tests.neuron.test_normaliser import sse_stream

OFFERED = frozenset({"get_weather", "get_time"})
CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        (CALL, [("get_weather", '{"city":"Paris"}')]),
        (f"  \n{CALL}\n ", [("get_weather", '{"city":"Paris"}')]),
        (f"```json\n{CALL}\n```", [("get_weather", '{"city":"Paris"}')]),
        (f"```\n{CALL}\n```", [("get_weather", '{"city":"Paris"}')]),
        ('{"name": "get_time", "parameters": {}}', [("get_time", "{}")]),
        ('{"name": "get_time", "arguments": "{\\"tz\\": \\"UTC\\"}"}', [("get_time", '{"tz": "UTC"}')]),
        ('{"type": "function", "function": {"name": "get_time", "arguments": {}}}', [("get_time", "{}")]),
        (
            f'[{CALL}, {{"name": "get_time", "arguments": {{}}}}]',
            [("get_weather", '{"city":"Paris"}'), ("get_time", "{}")],
        ),
        # never: an unknown name, text around the JSON, no arguments, arguments not an object, not JSON
        ('{"name": "rm_rf", "arguments": {}}', None),
        (f"Sure! {CALL}", None),
        (f"{CALL} done", None),
        ('{"name": "get_time"}', None),
        ('{"name": "get_time", "arguments": [1]}', None),
        ('{"name": "get_time", "arguments": "not json"}', None),
        ('{"city": "Paris"}', None),
        (f"[{CALL}, 3]", None),
        ("[]", None),
        ("{not json", None),
        ("Hello there", None),
    ],
)
def test_the_bare_json_rule(text, calls):
    assert bare_tool_calls(text, OFFERED) == calls


def test_never_without_offered_tools():
    assert bare_tool_calls(CALL, frozenset()) is None


@pytest.mark.parametrize(
    ("prefix", "may"),
    [
        *[("", True), ("  ", True), ("{", True), ("[", True), ("`", True), ("``", True), ("```", True)],
        *[("```json", True), ("```json\n", True), ("```json\n {", True), ("H", False), ("```json\nHi", False)],
        *[("``x", False), ("```a b", False), ("Sure", False)],
    ],
)
def test_text_is_held_only_while_it_may_become_a_call(prefix, may):
    assert may_become_call(prefix) is may


def test_strip_fence_keeps_unfenced_or_unclosed_text():
    assert strip_fence("```json\n{}\n```") == "{}"
    assert strip_fence("```json\n{}") == "```json\n{}"
    assert strip_fence(" {} ") == "{}"


def events(raw: bytes, offered=OFFERED, size: int = 7) -> list:
    norm = SSENormaliser(offered=offered)
    out = b""
    for i in range(0, len(raw), size):
        out += norm.feed(raw[i : i + size])
    out += norm.close()
    return [json.loads(e[6:]) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]


def rebuilt(chunks: list) -> tuple[str, list, str | None]:
    text, calls, finish = "", [], None
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice["delta"]
            text += delta.get("content") or ""
            calls += [(c["function"]["name"], c["function"]["arguments"]) for c in delta.get("tool_calls") or []]
            finish = choice.get("finish_reason") or finish
    return text, calls, finish


@pytest.mark.parametrize("answer", [CALL, f"```json\n{CALL}\n```", f"\n {CALL}"])
@pytest.mark.parametrize("size", [1, 3, 50])
def test_a_streamed_bare_json_answer_becomes_a_tool_call(answer, size):
    text, calls, finish = rebuilt(events(sse_stream(answer, size)))
    assert (text, calls, finish) == ("", [("get_weather", '{"city":"Paris"}')], "tool_calls")


def test_a_streamed_text_answer_is_released_at_its_first_character():
    chunks = events(sse_stream("Hello, the weather is fine.", 4), size=10_000)
    contents = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert contents[1] == "Hell"  # not held back until the end
    assert rebuilt(chunks) == ("Hello, the weather is fine.", [], "stop")


@pytest.mark.parametrize(
    ("answer", "offered"),
    [(CALL, frozenset()), ('{"name": "rm_rf", "arguments": {}}', OFFERED), (f"{CALL} and more", OFFERED)],
)
def test_json_that_is_not_an_offered_call_stays_text(answer, offered):
    assert rebuilt(events(sse_stream(answer, 5), offered=offered)) == (answer, [], "stop")


def test_a_whole_answer_that_is_bare_json_becomes_a_tool_call():
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": CALL}, "finish_reason": "stop"}]}
    choice = ChatNormaliser(offered=OFFERED).completion(body)["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert ChatNormaliser().completion(body) == body  # no tools offered: untouched
