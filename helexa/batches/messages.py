"""Anthropic's Message Batches API's formats: the create request's checks and the ``message_batch`` object. Pure
functions: no I/O, no event loop.

A message batch is a stored batch of endpoint :data:`~helexa.batches.formats.MESSAGES` (id ``msgbatch_…``): its
lines are the ``params`` of each request, sent as ``/v1/messages`` bodies; its results file (written when it ends,
see :func:`~helexa.batches.formats.finished_line`) is served at ``results_url``. What is checked when it is
created, as Anthropic checks it: a ``custom_id`` of 1 to 64 letters, digits, ``-`` and ``_``, unique in the
batch; ``params`` an object naming a model and not streaming. The rest of ``params`` is checked when the request
runs (an ``errored`` result, as Anthropic validates ``params`` asynchronously). Requests may name different
models: the batch's ``model`` field lists them, joined by commas (:func:`~helexa.batches.formats.batch_models`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec

from helexa.batches.formats import FINAL_STATUSES, BatchLine, Parsed

__all__ = ["MAX_MODELS", "MAX_PROBLEMS", "CreateMessageBatch", "message_batch_object", "parse_requests", "results_path"]

MAX_PROBLEMS = 5  # a refused create names this many problems, at most
MAX_MODELS = 16  # models one message batch may name
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Request(msgspec.Struct):
    custom_id: str
    params: msgspec.Raw


class CreateMessageBatch(msgspec.Struct):
    """What ``POST /v1/messages/batches`` reads."""

    requests: Annotated[list[_Request], msgspec.Meta(min_length=1)]


class _Params(msgspec.Struct):
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    stream: bool | None = None


_params_decoder = msgspec.json.Decoder(_Params)


def parse_requests(
    create: CreateMessageBatch,
    max_lines: int,
    max_line_bytes: int,
    check_model: Callable[[str], tuple[str, str] | None] = lambda _: None,
) -> Parsed:
    """The batch's lines (each request's ``params`` as it came) and models (in the order they first appear), or its
    problems (then no line), each naming its request as Anthropic does (``requests.3.custom_id: …``); see the
    module's docstring. ``check_model(model)``: ``(code, message)`` when a model named cannot run, asked once per
    model; at most :data:`MAX_MODELS` models."""
    parsed, seen, models = Parsed(), set[str](), list[str]()
    if len(create.requests) > max_lines:
        parsed.fail(
            "too_many_requests",
            f"requests: a batch may hold {max_lines} requests, this one holds "
            f"{len(create.requests)} ([batches] max_lines)",
        )
        return parsed
    for index, request in enumerate(create.requests):
        where = f"requests.{index}"
        if _CUSTOM_ID.fullmatch(request.custom_id) is None:
            parsed.fail("invalid_custom_id", f"{where}.custom_id: 1 to 64 letters, digits, '-' or '_'", index)
            continue
        if request.custom_id in seen:
            parsed.fail("duplicate_custom_id", f"{where}.custom_id: {request.custom_id!r} is used twice", index)
            continue
        seen.add(request.custom_id)
        if len(request.params) > max_line_bytes:
            parsed.fail("request_too_large", f"{where}.params: {max_line_bytes} bytes at most", index)
            continue
        try:
            params = _params_decoder.decode(request.params)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            parsed.fail("invalid_params", f"{where}.params: an object with a model ({str(exc)[:160]})", index)
            continue
        if params.stream:
            parsed.fail("stream_unsupported", f"{where}.params.stream: a batch's requests cannot stream", index)
        if "," in params.model:
            parsed.fail("invalid_model", f"{where}.params.model: {params.model[:80]!r} is not a model id", index)
        elif params.model not in models:
            models.append(params.model)
            if len(models) > MAX_MODELS:
                parsed.fail("too_many_models", f"{where}.params.model: a batch may name {MAX_MODELS} models", index)
                break
            if problem := check_model(params.model):
                parsed.fail(problem[0], f"{where}.params.model: {problem[1]}", index)
        parsed.lines.append(BatchLine(len(parsed.lines), request.custom_id, bytes(request.params)))
    parsed.model = ",".join(models)
    if parsed.errors:
        parsed.lines = []
    return parsed


def results_path(batch: str) -> str:
    """Where a message batch's results are served: a path, which the Anthropic SDKs resolve against the base URL
    they were given (so it holds behind a proxy that changes the scheme, host or prefix)."""
    return f"/v1/messages/batches/{batch}/results"


def _time(seconds: int | None) -> str | None:
    """An RFC 3339 time, as Anthropic's API writes them."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def message_batch_object(record: dict[str, Any]) -> dict[str, Any]:
    """The API's ``message_batch`` object for a stored batch record. As Anthropic counts them, every request is
    ``processing`` until the whole batch ended."""
    status, total = record["status"], record["total"]
    ended = status in FINAL_STATUSES
    counts = {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if ended:
        left = total - record["completed"] - record["failed"]
        counts = {
            "processing": 0,
            "succeeded": record["completed"],
            "errored": record["failed"],
            "canceled": left if status == "cancelled" else 0,
            "expired": left if status == "expired" else 0,
        }
    return {
        "id": record["id"],
        "type": "message_batch",
        "processing_status": "ended" if ended else "canceling" if status == "cancelling" else "in_progress",
        "request_counts": counts,
        "ended_at": _time(record[f"{status}_at"]) if ended else None,
        "created_at": _time(record["created_at"]),
        "expires_at": _time(record["expires_at"]),
        "archived_at": None,
        "cancel_initiated_at": _time(record["cancelling_at"]),
        "results_url": results_path(record["id"]) if ended else None,
    }
