"""The one exception tree of helexa.

Every error helexa itself produces is a :class:`HelexaError`. Each class carries the HTTP ``status``, the OpenAI
error ``type`` and a machine-readable ``code``; the server's error middleware renders it in the envelope of the
API the client spoke (OpenAI or Anthropic). Handlers raise, the middleware converts; nothing returns an
error-or-result union.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "HelexaError",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "PluginError",
    "PreflightError",
    "UnsupportedMediaType",
    "UpstreamError",
    "anthropic_type_for_status",
    "openai_type_for_status",
]

# Status -> error "type" in each dialect. OpenAI's own API uses these names; Anthropic's are from its
# documented error table. Unlisted 4xx fall back to invalid_request_error, unlisted 5xx to a server error.
_OPENAI_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}
_ANTHROPIC_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def openai_type_for_status(status: int) -> str:
    """The OpenAI error ``type`` for an HTTP status."""
    return _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")


def anthropic_type_for_status(status: int) -> str:
    """The Anthropic error ``type`` for an HTTP status."""
    return _ANTHROPIC_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


class HelexaError(Exception):
    """Base of every helexa error.

    Subclasses set ``status`` and ``code``; ``type`` follows from the status unless a subclass overrides it.
    ``param`` names the offending request field when there is one. ``headers`` are added to the HTTP response
    (``Retry-After`` for :class:`Overloaded`, for instance).
    """

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        status_override: int | None = None,
    ) -> None:
        super().__init__(message)
        if status_override is not None:
            self.status = status_override  # type: ignore[misc]  # an error relayed with another party's status
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class default
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    @property
    def type(self) -> str:
        """The OpenAI error type for this error's status."""
        return openai_type_for_status(self.status)


class ConfigError(HelexaError):
    """The configuration is invalid. The message names the file and the key path; the CLI exits with 2."""

    code = "invalid_config"


class PluginError(HelexaError):
    """A plugin is missing, duplicated or broken."""

    code = "plugin_error"


class InvalidRequest(HelexaError):
    """The request is malformed (bad JSON, a missing or wrong-typed field)."""

    status = 400
    code = "invalid_request"


class AuthenticationError(HelexaError):
    """Missing or wrong credentials."""

    status = 401
    code = "invalid_api_key"


class PermissionDenied(HelexaError):
    """Valid credentials that may not do this."""

    status = 403
    code = "permission_denied"


class UnsupportedMediaType(HelexaError):
    """A request body that is not JSON where JSON is required (415)."""

    status = 415
    code = "unsupported_media_type"


class Conflict(HelexaError):
    """The request clashes with another one in progress, or with the state of what it names (409): an unload
    cancelled this load, a load of the same model with another spec is under way, a batch that ended cannot be
    cancelled."""

    status = 409
    code = "conflict"


class NotFound(HelexaError):
    """No such route, model or resource."""

    status = 404
    code = "not_found"


class PayloadTooLarge(HelexaError):
    """The request body is larger than the configured limit."""

    status = 413
    code = "request_too_large"


class ContextLengthExceeded(HelexaError):
    """The prompt does not fit the model's context (400). Final: retrying the same request cannot help.

    Rendered in OpenAI's words (``context_length_exceeded``, "This model's maximum context length is M tokens.
    However, your messages resulted in N tokens.") with ``n_prompt_tokens`` and ``n_ctx``, and in Anthropic's
    (``prompt is too long: N tokens > M maximum``), the texts Codex and Claude Code act on.
    """

    status = 400
    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int = 0, context: int = 0, detail: str = "") -> None:
        self.prompt_tokens, self.context = prompt_tokens, context
        if prompt_tokens and context:
            message = (
                f"This model's maximum context length is {context} tokens. However, your messages resulted in "
                f"{prompt_tokens} tokens. Please reduce the length of the messages."
            )
        else:
            message = "The prompt is longer than this model's context. Please reduce the length of the messages."
            message += f" (engine: {detail[:300]})" if detail else ""
        super().__init__(message, param="messages", extra={"n_prompt_tokens": prompt_tokens, "n_ctx": context})

    @property
    def anthropic_message(self) -> str:
        """Anthropic's own words for it, which Claude Code recognises (and compacts the conversation)."""
        if self.prompt_tokens and self.context:
            return f"prompt is too long: {self.prompt_tokens} tokens > {self.context} maximum"
        return "prompt is too long: " + self.message


class UpstreamError(HelexaError):
    """A neuron or an engine could not be reached or answered nonsense."""

    status = 502
    code = "upstream_error"


class Overloaded(HelexaError):
    """Too much work queued; retry later (a ``Retry-After`` header says when)."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        headers = {"Retry-After": str(retry_after), **kwargs.pop("headers", {})}
        super().__init__(message, headers=headers, **kwargs)


class PreflightError(HelexaError):
    """A model load refused before anything started (422).

    ``kind`` classifies the reason (``source_missing``, ``quant_not_found``, ``insufficient_vram``, …) and
    ``suggestion`` says what to do instead. Rendered as the OpenAI envelope plus ``kind``, ``model_id`` and
    ``suggestion`` inside ``error``.
    """

    status = 422
    code = "preflight_failed"

    def __init__(self, kind: str, model_id: str, message: str, suggestion: str = "") -> None:
        super().__init__(message, extra={"kind": kind, "model_id": model_id, "suggestion": suggestion})
        self.kind = kind
        self.model_id = model_id
        self.suggestion = suggestion
