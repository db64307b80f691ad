"""What the gateway sends upstream: the client's bytes, unless an alias is rewritten or usage must be asked for
(a key in front when the body has no ``stream_options``, a parse and re-encode otherwise)."""

from __future__ import annotations

import json

import pytest

from helexa.gateway.proxy import prepare_body
from helexa.wire.openai import decode_head

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "head_model", "stream", "wants", "sent", "injected"),
    [
        # nothing to change: the very same bytes
        ({"model": "m", "messages": MESSAGES}, "m", False, False, None, False),
        ({"model": "m", "messages": MESSAGES, "stream": True}, "m", True, False, None, False),
        # a stream without stream_options: include_usage in front, the rest byte for byte
        ({"model": "m", "messages": MESSAGES, "stream": True}, "m", True, True, {"include_usage": True}, True),
        # the client's own options are kept, include_usage added
        (
            {"model": "m", "stream": True, "stream_options": {"continuous_usage_stats": False}},
            "m",
            True,
            True,
            {"continuous_usage_stats": False, "include_usage": True},
            True,
        ),
        ({"model": "m", "stream": True, "stream_options": None}, "m", True, True, {"include_usage": True}, True),
        (
            {"model": "m", "stream": True, "stream_options": {"include_usage": False}},
            "m",
            True,
            True,
            {"include_usage": True},
            True,
        ),
        # the client asked for usage itself: sent as it is, shown to it
        ({"model": "m", "stream": True, "stream_options": {"include_usage": True}}, "m", True, True, None, False),
        # an alias: rewritten, with usage asked for too
        ({"model": "alias", "stream": True}, "alias", True, True, {"include_usage": True}, True),
    ],
)
def test_the_body_sent_upstream(body, head_model, stream, wants, sent, injected):
    raw = json.dumps(body, indent=rng_indent(body)).encode()
    head = decode_head(raw)
    out, did = prepare_body(raw, head_model, "m", stream=stream, wants_usage=wants, stream_options=head.stream_options)
    assert did is injected
    decoded = json.loads(out)
    assert decoded["model"] == "m"
    if sent is None and head_model == "m":
        assert out is raw
        return
    assert decoded.get("stream_options") == sent
    assert {k: v for k, v in decoded.items() if k not in ("stream_options", "model")} == {
        k: v for k, v in body.items() if k not in ("stream_options", "model")
    }
    if "stream_options" not in body and head_model == "m":  # the fast path: the rest byte for byte
        assert out.endswith(raw[raw.index(b"{") + 1 :])


def rng_indent(body: dict) -> int | None:
    """Some bodies pretty-printed, as clients send them: the key goes in front either way."""
    return 2 if "messages" in body else None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "stream": true, "stream_\\u006fptions": {"include_usage": false}}',
        b'{"model": "m", "stream": true, "\\u0073tream_options": null}',
    ],
    ids=["escaped, false", "escaped, null"],
)
def test_stream_options_spelled_with_escapes_are_what_they_decode_to(raw):
    """The key decides as the engine will read it: an escaped ``stream_options`` is the same key, so usage is
    asked for by rewriting it — not by a second key in front that the engine would then read as overridden."""
    head = decode_head(raw)
    out, did = prepare_body(raw, "m", "m", stream=True, wants_usage=True, stream_options=head.stream_options)
    assert did is True
    assert json.loads(out)["stream_options"] == {"include_usage": True}
    assert out.count(b"stream_") == 1
