"""The few OpenAI request fields helexa reads: everything else is forwarded as the client sent it."""

from __future__ import annotations

import msgspec

from helexa.errors import InvalidRequest
from helexa.wire import ModelId, WireStruct, decode_request_body

__all__ = ["InferenceHead", "decode_head"]


class InferenceHead(WireStruct):
    """The only fields of an inference request the neuron and gateway read."""

    model: ModelId = ""
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
    return head
