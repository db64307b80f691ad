"""What an engine's error answer means, from the engines' own words. Pure; table-tested with their real texts.

Three kinds matter to the neuron:

- **context overflow** — the prompt does not fit the model's context (llama.cpp's ``exceed_context_size_error``,
  vLLM's "This model's maximum context length is …"). It is the client's to fix: it becomes the one error every
  dialect knows (:class:`helexa.errors.ContextLengthExceeded`), never a retry.
- **template refusal** — the model's chat template refused the conversation's shape (a system message after the
  first turn: "System message must be at the beginning", "System role not supported", roles that must
  alternate). ``system_messages = "auto"`` then merges the system messages and tries once more.
- **other** — relayed as the engine said it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import msgspec

__all__ = ["EngineRefusal", "RefusalKind", "classify"]


class RefusalKind(enum.StrEnum):
    """What an engine's error answer means."""

    CONTEXT_OVERFLOW = "context_overflow"
    TEMPLATE_REFUSAL = "template_refusal"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class EngineRefusal:
    """An engine's error answer, classified: the prompt's tokens and the context's (0 = not said)."""

    kind: RefusalKind
    message: str = ""
    prompt_tokens: int = 0
    context: int = 0


# (pattern, group of the prompt tokens, group of the context); numbers may be absent from older texts.
_OVERFLOWS: tuple[tuple[re.Pattern[str], int, int], ...] = (
    # llama.cpp: "request (4144 tokens) exceeds the available context size (4096 tokens), try increasing it"
    (re.compile(r"request \((\d+) tokens\) exceeds the available context size \((\d+) tokens\)"), 1, 2),
    # older llama.cpp: "the request exceeds the available context size, try increasing the context size …"
    (re.compile(r"exceeds the available context size"), 0, 0),
    # vLLM: "This model's maximum context length is 512 tokens. However, your prompt contains at least 600 input
    # tokens, …" (and "… your request has 600 input tokens", "… you requested 620 tokens (600 in the messages")
    (
        re.compile(
            r"maximum context length is (\d+) tokens\. However, (?:your prompt contains|your request has|you "
            r"requested|your messages resulted in) (?:at least )?(\d+)"
        ),
        2,
        1,
    ),
    # vLLM: "The decoder prompt (length 600) is longer than the maximum model length of 512."
    (re.compile(r"prompt \(length (\d+)\) (?:plus [^.]* )?is longer than the maximum model length of (\d+)"), 1, 2),
    (re.compile(r"maximum context length is (\d+) tokens"), 0, 1),
)
# The raise_exception texts of chat templates that refuse a conversation's shape (Qwen, Gemma, Mistral, Llama 2,
# SmolLM and others), as llama.cpp ("… Jinja Exception: …") and vLLM relay them.
_TEMPLATE_REFUSALS = re.compile(
    r"system message must be at the beginning"
    r"|system (?:role|message)s? (?:is |are )?not supported"
    r"|conversation roles must alternate"
    r"|only user(?:,| and) assistant"
    r"|after the optional system message, conversation roles must alternate"
    r"|roles must alternate user/assistant",
    re.IGNORECASE,
)


class _Body(msgspec.Struct):
    error: Any = None
    message: Any = None  # vLLM's error objects carry it at the top level ({"object": "error", "message": …})


def classify(status: int, body: bytes) -> EngineRefusal:
    """The meaning of an engine's error answer (``status`` ≥ 400, ``body`` as it came)."""
    message, extra = _message(body)
    for pattern, prompt_group, context_group in _OVERFLOWS:
        match = pattern.search(message)
        if match is None and extra.get("type") != "exceed_context_size_error":
            continue
        prompt = int(match.group(prompt_group)) if match and prompt_group else _int(extra.get("n_prompt_tokens"))
        context = int(match.group(context_group)) if match and context_group else _int(extra.get("n_ctx"))
        return EngineRefusal(
            RefusalKind.CONTEXT_OVERFLOW,
            message,
            prompt or _int(extra.get("n_prompt_tokens")),
            context or _int(extra.get("n_ctx")),
        )
    if _TEMPLATE_REFUSALS.search(message):
        return EngineRefusal(RefusalKind.TEMPLATE_REFUSAL, message)
    return EngineRefusal(RefusalKind.OTHER, message)


def _message(body: bytes) -> tuple[str, dict[str, Any]]:
    """The error's message and the fields around it (``type``, ``n_ctx``, …); the raw text when it is no JSON."""
    try:
        parsed = msgspec.json.decode(body, type=_Body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return body[:2000].decode(errors="replace"), {}
    error = parsed.error
    if isinstance(error, dict):
        return str(error.get("message", ""))[:2000], error
    if isinstance(error, str):
        return error[:2000], {}
    return str(parsed.message or "")[:2000], {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
