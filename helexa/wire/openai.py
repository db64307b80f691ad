"""The few OpenAI request fields helexa reads: everything else is forwarded as the client sent it.

What helexa reads it type-checks before anything else happens — before a stream opens, a model loads or a
byte goes to a neuron — so a wrong type is a 400 naming the field, never a stream that fails later: ``model``,
``stream``, ``stream_options``, ``user``, ``prompt_cache_key``, and the shape of the fields each endpoint is
made of (``messages`` and ``tools`` as lists of objects, ``tool_choice`` a string or an object, ``prompt`` /
``input`` text or a list, a rerank's ``query`` text and ``documents`` a list, the token limits integers). Lists
are checked without being decoded (``msgspec.Raw`` per item): a long conversation costs a scan, not a parse.
"""

from __future__ import annotations

import msgspec

from helexa.errors import InvalidRequest
from helexa.wire import MODEL_ID_MAX_LENGTH, WireStruct, decode_request_body

__all__ = ["InferenceHead", "StreamOptions", "decode_head"]


class StreamOptions(WireStruct):
    """``stream_options``: what helexa reads of it (other keys pass through)."""

    include_usage: bool | None = None


class InferenceHead(WireStruct):
    """The fields of an inference request the neuron and gateway read or check."""

    model: str = ""  # checked by length here; an id that matches nothing is a 404 that quotes it cut short
    stream: bool = False
    stream_options: StreamOptions | msgspec.UnsetType | None = msgspec.UNSET  # UNSET: absent (null is present)
    user: str = ""  # with prompt_cache_key: names the conversation for prefix affinity
    prompt_cache_key: str = ""
    messages: list[msgspec.Raw] | None = None
    tools: list[msgspec.Raw] | None = None
    # any JSON value, kept undecoded (an absent field is an empty Raw: msgspec takes no Raw | None)
    tool_choice: msgspec.Raw = msgspec.Raw()
    prompt: msgspec.Raw = msgspec.Raw()
    input: msgspec.Raw = msgspec.Raw()
    query: msgspec.Raw = msgspec.Raw()  # rerank
    documents: msgspec.Raw = msgspec.Raw()  # rerank
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None


_head_decoder = msgspec.json.Decoder(InferenceHead)
# the fields each endpoint cannot do without
_REQUIRED = {
    "/v1/chat/completions": ("messages",),
    "/v1/completions": ("prompt",),
    "/v1/embeddings": ("input",),
    "/v1/rerank": ("query", "documents"),
}


def decode_head(body: bytes, path: str = "") -> InferenceHead:
    """Read and check the fields helexa reads of a request to ``path`` (``/v1/chat/completions``, …; empty: no
    endpoint-specific checks).

    :raises InvalidRequest: not JSON, no model, or a field of the wrong type (``param`` names it).
    """
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with 'model'")
    head = decode_request_body(_head_decoder, body)
    if not head.model:
        raise InvalidRequest("'model' is required", param="model")
    if len(head.model) > MODEL_ID_MAX_LENGTH:
        raise InvalidRequest(f"model: longer than {MODEL_ID_MAX_LENGTH} characters", param="model")
    for name in ("messages", "tools"):
        _objects(name, getattr(head, name))
    _one_of("tool_choice", head.tool_choice, b'"{', "a string or an object")
    _one_of("prompt", head.prompt, b'"[', "text or a list")
    _one_of("input", head.input, b'"[', "text or a list")
    _one_of("query", head.query, b'"{', "text or an object")
    _one_of("documents", head.documents, b"[", "a list")
    for required in _REQUIRED.get(path, ()):
        if _absent(getattr(head, required)):
            raise InvalidRequest(f"'{required}' is required", param=required)
    return head


def _first(raw: msgspec.Raw) -> bytes:
    return bytes(raw).lstrip()[:1]


def _absent(value: msgspec.Raw | list[msgspec.Raw] | None) -> bool:
    return value is None or (isinstance(value, msgspec.Raw) and _first(value) in (b"", b"n"))


def _objects(name: str, items: list[msgspec.Raw] | None) -> None:
    for i, item in enumerate(items or ()):
        if _first(item) != b"{":
            raise InvalidRequest(f"{name}[{i}]: expected an object", param=f"{name}[{i}]")


def _one_of(name: str, raw: msgspec.Raw, starts: bytes, what: str) -> None:
    if not _absent(raw) and _first(raw) not in starts:
        raise InvalidRequest(f"{name}: expected {what}", param=name)
