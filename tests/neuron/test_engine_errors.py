"""The engines' own error texts, classified: a context overflow, a chat template's refusal, or anything else.

The llama.cpp texts were captured from the bundled server (xllamacpp) with the demo model; the vLLM texts are the
ones vLLM 0.32 raises (``renderers/params.py``, ``v1/engine/input_processor.py``), in its error envelope.
"""

from __future__ import annotations

import json

import pytest

from helexa.neuron.engine_errors import RefusalKind, classify
from tests.fakes.fake_engine import TEMPLATE_REFUSAL


def llamacpp(message: str, kind: str = "invalid_request_error", **extra) -> bytes:
    return json.dumps({"error": {"code": 400, "message": message, "type": kind, **extra}}).encode()


def vllm(message: str) -> bytes:
    return json.dumps(
        {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}
    ).encode()


OVERFLOW = RefusalKind.CONTEXT_OVERFLOW
TEMPLATE = RefusalKind.TEMPLATE_REFUSAL
OTHER = RefusalKind.OTHER


@pytest.mark.parametrize(
    ("status", "body", "kind", "prompt", "context"),
    [
        pytest.param(
            400,
            llamacpp(
                "request (9010 tokens) exceeds the available context size (8192 tokens), try increasing it",
                "exceed_context_size_error",
                n_prompt_tokens=9010,
                n_ctx=8192,
            ),
            OVERFLOW,
            9010,
            8192,
            id="llama.cpp overflow",
        ),
        pytest.param(
            400,
            llamacpp(
                "the request exceeds the available context size, try increasing the context size or enable "
                "context shift"
            ),
            OVERFLOW,
            0,
            0,
            id="older llama.cpp overflow",
        ),
        pytest.param(
            400,
            llamacpp("something else", "exceed_context_size_error", n_prompt_tokens=5000, n_ctx=4096),
            OVERFLOW,
            5000,
            4096,
            id="llama.cpp overflow by its type alone",
        ),
        pytest.param(
            400,
            vllm(
                "This model's maximum context length is 512 tokens. However, your prompt contains at least 513 "
                "input tokens, which exceeds this limit even without any output tokens. Please reduce the length "
                "of the input prompt."
            ),
            OVERFLOW,
            513,
            512,
            id="vLLM overflow (tokens)",
        ),
        pytest.param(
            400,
            vllm(
                "This model's maximum context length is 512 tokens. However, your prompt contains 9000 characters "
                "(more than 2048 characters, which is the upper bound for 512 input tokens). Please reduce the "
                "length of the input prompt."
            ),
            OVERFLOW,
            9000,  # characters, not tokens: still an overflow; the number is what vLLM said
            512,
            id="vLLM overflow (characters)",
        ),
        pytest.param(
            400,
            vllm(
                "The decoder prompt (length 600) is longer than the maximum model length of 512. Make sure that "
                "`max_model_len` is no smaller than the number of text tokens."
            ),
            OVERFLOW,
            600,
            512,
            id="vLLM decoder prompt too long",
        ),
        pytest.param(400, llamacpp(TEMPLATE_REFUSAL), TEMPLATE, 0, 0, id="llama.cpp template raises"),
        pytest.param(400, vllm("System message must be at the beginning."), TEMPLATE, 0, 0, id="vLLM Qwen template"),
        pytest.param(400, vllm("System role not supported"), TEMPLATE, 0, 0, id="Gemma template"),
        pytest.param(
            400,
            vllm("Conversation roles must alternate user/assistant/user/assistant/..."),
            TEMPLATE,
            0,
            0,
            id="Mistral / Llama 2 template",
        ),
        pytest.param(400, llamacpp("'temperature' must be a number"), OTHER, 0, 0, id="another 400"),
        pytest.param(500, b"Internal Server Error", OTHER, 0, 0, id="plain text 500"),
        pytest.param(503, llamacpp("Loading model", "unavailable_error"), OTHER, 0, 0, id="llama.cpp loading"),
        pytest.param(400, b"{not json", OTHER, 0, 0, id="broken JSON"),
        pytest.param(400, json.dumps({"error": "context size"}).encode(), OTHER, 0, 0, id="error as a string"),
    ],
)
def test_engine_errors_are_classified_from_the_engines_own_words(status, body, kind, prompt, context):
    refusal = classify(status, body)
    assert (refusal.kind, refusal.prompt_tokens, refusal.context) == (kind, prompt, context)
    assert refusal.message  # the engine's words are kept for the log
