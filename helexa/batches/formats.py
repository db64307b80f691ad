"""The OpenAI Batch API's formats: ids, the input file's lines and their checks, the output and error files'
lines, and the ``file`` and ``batch`` objects as the API answers them. Pure functions: no I/O, no event loop.

An input file is JSONL, one request per line: ``{"custom_id": …, "method": "POST", "url": "/v1/chat/completions",
"body": {…}}``. A batch is checked whole before it runs (OpenAI checks it in its ``validating`` state): every line
is JSON with a unique ``custom_id``, ``method`` POST, ``url`` the batch's endpoint, a ``body`` object naming one
model — the same on every line, as OpenAI requires — and no ``stream``. Each line's ``body`` is kept as the bytes
it came as and sent as they are. An output line is ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"}, "error"}``; lines that never ran (the batch expired) have ``"response": null`` and an
``error``.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec

__all__ = [
    "ENDPOINTS",
    "FINAL_STATUSES",
    "MAX_ERRORS",
    "MESSAGES",
    "STATUSES",
    "TASKS",
    "BatchLine",
    "LineError",
    "Parsed",
    "batch_id",
    "batch_models",
    "batch_object",
    "completion_window_seconds",
    "error_line",
    "expiry_seconds",
    "file_id",
    "file_object",
    "finished_line",
    "output_line",
    "parse_input",
    "result_file_id",
    "valid_id",
]

# the endpoints an OpenAI batch may target, and the catalogue task each needs
ENDPOINTS = {
    "/v1/responses": "chat",
    "/v1/chat/completions": "chat",
    "/v1/completions": "chat",
    "/v1/embeddings": "embed",
    "/v1/rerank": "rerank",
}
MESSAGES = "/v1/messages"  # the endpoint of an Anthropic message batch (``/v1/messages/batches``; not OpenAI's)
TASKS = {**ENDPOINTS, MESSAGES: "chat"}  # every endpoint a stored batch may have, and the task it needs
FINAL_STATUSES = ("failed", "completed", "expired", "cancelled")  # a batch that ended
STATUSES = ("validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled")
MAX_ERRORS = 100  # a failed validation reports this many lines' errors, at most
CUSTOM_ID_MAX = 512
_ID = re.compile(r"(file-|batch_|msgbatch_)[0-9a-f]{24}")


def batch_models(model: str | None) -> list[str]:
    """The models a stored batch's lines ask for, from its ``model`` field: one (an OpenAI batch), or several
    joined by commas (an Anthropic message batch may mix them; a model id has no comma)."""
    return [m for m in (model or "").split(",") if m] or [""]


def file_id() -> str:
    """A new file's id (``file-`` and 24 hex digits)."""
    return f"file-{secrets.token_hex(12)}"


def batch_id(endpoint: str = "") -> str:
    """A new batch's id: ``batch_`` and 24 hex digits (``msgbatch_`` for a batch of ``endpoint``
    :data:`MESSAGES`, as Anthropic's ids begin)."""
    return f"{'msgbatch_' if endpoint == MESSAGES else 'batch_'}{secrets.token_hex(12)}"


def result_file_id(batch: str, kind: str) -> str:
    """The id of a batch's ``output`` or ``errors`` file: derived from the batch's, so writing it again (a
    restart while finalizing) replaces it rather than adding another."""
    return f"file-{hashlib.sha256(f'{batch}:{kind}'.encode()).hexdigest()[:24]}"


def valid_id(value: str) -> bool:
    """Whether ``value`` has the form of an id helexa hands out (anything else is never looked up)."""
    return _ID.fullmatch(value) is not None


def completion_window_seconds(window: str, max_hours: int) -> int:
    """Seconds of a ``completion_window`` (``"24h"``; any ``<N>h`` from 1 to ``max_hours``).

    :raises ValueError: another form, or out of range (the message says what is accepted).
    """
    found = re.fullmatch(r"([1-9][0-9]{0,3})h", window)
    if found is None or int(found.group(1)) > max_hours:
        raise ValueError(f"completion_window: give hours as '24h' (1h to {max_hours}h), got {window[:40]!r}")
    return int(found.group(1)) * 3600


EXPIRY_SECONDS = (3600, 30 * 86400)  # what expires_after / output_expires_after may say (OpenAI's range)


def expiry_seconds(anchor: str, seconds: str | int) -> int:
    """The seconds of an ``expires_after`` (``{"anchor": "created_at", "seconds": N}``, N from an hour to 30 days).

    :raises ValueError: another anchor, or ``seconds`` not a whole number in range (the message says what is).
    """
    if anchor != "created_at":
        raise ValueError(f"anchor: 'created_at' (got {str(anchor)[:40]!r})")
    text = str(seconds)
    low, high = EXPIRY_SECONDS
    if not text.isdigit() or not low <= int(text) <= high:
        raise ValueError(f"seconds: a whole number from {low} (an hour) to {high} (30 days), got {text[:20]!r}")
    return int(text)


class _Line(msgspec.Struct):
    custom_id: Annotated[str, msgspec.Meta(min_length=1, max_length=CUSTOM_ID_MAX)]
    method: str
    url: str
    body: msgspec.Raw


class _Body(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    stream: bool | None = None


_line_decoder = msgspec.json.Decoder(_Line)
_body_decoder = msgspec.json.Decoder(_Body)


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its place in the file (0-based), ``custom_id`` and ``body`` (the line's bytes)."""

    index: int
    custom_id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class LineError:
    """Why a line of an input file cannot run (OpenAI's ``errors.data[]``; ``line`` is 1-based)."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass
class Parsed:
    """An input file read for a batch: its lines and model, or its errors (then nothing runs)."""

    lines: list[BatchLine] = field(default_factory=list)
    model: str = ""
    errors: list[LineError] = field(default_factory=list)

    def fail(self, code: str, message: str, line: int | None = None, param: str | None = None) -> None:
        """Note an error (up to :data:`MAX_ERRORS`)."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(LineError(code, message, line, param))


def parse_input(data: bytes, endpoint: str, max_lines: int, max_line_bytes: int) -> Parsed:
    """Check every line of an input file for a batch to ``endpoint``; see the module's docstring.

    Blank lines are skipped; errors past :data:`MAX_ERRORS` are not reported.
    """
    parsed, seen = Parsed(), set[str]()
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        if len(raw) > max_line_bytes:
            parsed.fail("line_too_large", f"a line may be {max_line_bytes} bytes at most", number)
            continue
        _check_line(parsed, seen, raw, number, endpoint)
    if not parsed.lines and not parsed.errors:
        parsed.fail("empty_file", "the input file holds no request")
    if len(parsed.lines) > max_lines:
        parsed.fail("too_many_requests", f"a batch may hold {max_lines} requests; this file holds {len(parsed.lines)}")
    if parsed.errors:
        parsed.lines = []
    return parsed


def _check_line(parsed: Parsed, seen: set[str], raw: bytes, number: int, endpoint: str) -> None:
    try:
        line = _line_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        parsed.fail("invalid_request", f"not a batch request line: {str(exc)[:200]}", number)
        return
    except msgspec.DecodeError:
        parsed.fail("invalid_json_line", "this line is not JSON (one request per line, UTF-8)", number)
        return
    if line.custom_id in seen:
        parsed.fail(
            "duplicate_custom_id", f"custom_id {line.custom_id[:64]!r} is on an earlier line", number, "custom_id"
        )
        return
    seen.add(line.custom_id)
    if line.method != "POST":
        parsed.fail("invalid_method", f"method must be POST, got {line.method[:20]!r}", number, "method")
    if line.url != endpoint:
        parsed.fail(
            "mismatched_url", f"url must be the batch's endpoint {endpoint}, got {line.url[:80]!r}", number, "url"
        )
    try:
        body = _body_decoder.decode(line.body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        parsed.fail("invalid_body", f"body: a request object with a model ({str(exc)[:160]})", number, "body")
        return
    if body.stream:
        parsed.fail("stream_unsupported", "a batch's requests cannot stream: remove 'stream'", number, "body.stream")
    if not parsed.model:
        parsed.model = body.model
    elif body.model != parsed.model:
        parsed.fail("mismatched_model", f"every line must use model {parsed.model!r}", number, "body.model")
    parsed.lines.append(BatchLine(len(parsed.lines), line.custom_id, bytes(line.body)))


_encoder = msgspec.json.Encoder()


class _Response(msgspec.Struct):
    status_code: int
    request_id: str
    body: msgspec.Raw


class _OutputLine(msgspec.Struct):
    id: str
    custom_id: str
    response: _Response | None
    error: dict[str, str] | None


def output_line(custom_id: str, status: int, request_id: str, body: bytes) -> bytes:
    """A line of the output (2xx) or error file: the request's answer as the engine (or helexa) gave it;
    ``body`` must be JSON (it is embedded as it is)."""
    response = _Response(status, request_id, msgspec.Raw(body))
    return _encoder.encode(_OutputLine(f"batch_req_{secrets.token_hex(12)}", custom_id, response, None)) + b"\n"


def error_line(custom_id: str, code: str, message: str) -> bytes:
    """A line of the error file for a request that never ran (``batch_expired``, ``batch_cancelled``)."""
    error = {"code": code, "message": message}
    return _encoder.encode(_OutputLine(f"batch_req_{secrets.token_hex(12)}", custom_id, None, error)) + b"\n"


def finished_line(
    endpoint: str, custom_id: str, answer: tuple[int, str, bytes] | None, final: str
) -> tuple[str, bytes]:
    """What a finished batch's files hold for one line: ``(file, line)``, the file ``"output"`` or ``"errors"``
    (``("", b"")``: nothing). ``answer``: the line's ``(status, request id, JSON body)``, ``None`` when it never
    ran; ``final``: how the batch ended.

    An OpenAI batch: its answer in the output (2xx) or error file; a line that never ran is in the error file
    as ``batch_expired``, left out when the batch was cancelled. A message batch (:data:`MESSAGES`): one results
    file in Anthropic's form, every line in it — ``succeeded`` with the message, ``errored`` with Anthropic's
    error envelope, ``canceled`` or ``expired``.
    """
    if endpoint == MESSAGES:
        if answer is None:
            result: dict[str, Any] = {"type": "canceled" if final == "cancelled" else "expired"}
        elif 200 <= answer[0] < 300:
            result = {"type": "succeeded", "message": msgspec.Raw(answer[2])}
        else:
            result = {"type": "errored", "error": msgspec.Raw(answer[2])}
        return "output", _encoder.encode({"custom_id": custom_id, "result": result}) + b"\n"
    if answer is not None:
        return ("output" if 200 <= answer[0] < 300 else "errors"), output_line(custom_id, *answer)
    if final == "expired":
        message = "This request could not be executed before the completion window expired."
        return "errors", error_line(custom_id, "batch_expired", message)
    return "", b""


def file_object(record: dict[str, Any]) -> dict[str, Any]:
    """The API's ``file`` object for a stored file record."""
    return {
        "id": record["id"],
        "object": "file",
        "bytes": record["bytes"],
        "created_at": record["created_at"],
        "filename": record["filename"],
        "purpose": record["purpose"],
        "status": "processed",
        "expires_at": record.get("expires_at"),
        "status_details": None,
    }


_BATCH_TIMES = (
    "expires_at",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def batch_object(record: dict[str, Any]) -> dict[str, Any]:
    """The API's ``batch`` object for a stored batch record (counts and token use as they are now)."""
    batch = {
        "id": record["id"],
        "object": "batch",
        "endpoint": record["endpoint"],
        "model": record["model"],
        "errors": json.loads(record["errors"]) if record["errors"] else None,
        "input_file_id": record["input_file_id"],
        "completion_window": record["completion_window"],
        "status": record["status"],
        "output_file_id": record["output_file_id"],
        "error_file_id": record["error_file_id"],
        "created_at": record["created_at"],
        **{name: record[name] for name in _BATCH_TIMES},
        "request_counts": {"total": record["total"], "completed": record["completed"], "failed": record["failed"]},
        "usage": {
            "input_tokens": record["input_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": record["output_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": record["input_tokens"] + record["output_tokens"],
        },
        "metadata": json.loads(record["metadata"]) if record["metadata"] else None,
    }
    return batch
