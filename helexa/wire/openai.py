"""The few OpenAI request fields helexa reads: everything else is forwarded as the client sent it."""

from __future__ import annotations

import msgspec

from helexa.errors import InvalidRequest
from helexa.wire import MODEL_ID_MAX_LENGTH, WireStruct, decode_request_body

__all__ = ["InferenceHead", "decode_head"]


class InferenceHead(WireStruct):
    """The only fields of an inference request the neuron and gateway read."""

    model: str = ""  # checked by length here; an id that matches nothing is a 404 that quotes it cut short
    stream: bool = False
    user: str = ""  # with prompt_cache_key: names the conversation for prefix affinity
    prompt_cache_key: str = ""


_head_decoder = msgspec.json.Decoder(InferenceHead)


def decode_head(body: bytes) -> InferenceHead:
    """Read ``model`` and ``stream`` from a request body. :raises InvalidRequest: not JSON, or no model."""
    if not body:
        raise InvalidRequest("request body is empty; send a JSON object with 'model'")
    head = decode_request_body(_head_decoder, body)
    if not head.model:
        raise InvalidRequest("'model' is required", param="model")
    if len(head.model) > MODEL_ID_MAX_LENGTH:
        raise InvalidRequest(f"model: longer than {MODEL_ID_MAX_LENGTH} characters", param="model")
    return head
