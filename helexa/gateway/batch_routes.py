"""The OpenAI Batch API: ``/v1/batches`` (create, get, list, cancel), as the official SDKs call it, and the pieces
every batch route shares (ownership, paging, files kept and sent); the files are :mod:`helexa.gateway.file_routes`'
and the batches are run by :mod:`helexa.gateway.batch_runner`.

Batches belong to the key that created them (its name; one owner for all without keys): another key gets a 404
for them, as for an id that does not exist. A batch's input file is checked whole when the batch is created (a
batch with bad lines is ``failed`` at once, its ``errors`` naming each line, as OpenAI reports them).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from aiohttp import web

from helexa.batches.contract import Batches, NewBatch
from helexa.batches.formats import (
    ENDPOINTS,
    MESSAGES,
    LineError,
    batch_object,
    completion_window_seconds,
    expiry_seconds,
    parse_input,
    valid_id,
)
from helexa.config import BatchesSection
from helexa.errors import Conflict, InvalidRequest, NotFound
from helexa.gateway.batch_runner import BatchRunner
from helexa.gateway.state import router_key
from helexa.server.app import json_response, max_body_key
from helexa.server.body import read_body
from helexa.server.keys import request_key_key
from helexa.wire import WireStruct, decode_request_body

__all__ = [
    "admin_cancel_batch",
    "admin_list_batches",
    "batch_runner_key",
    "batch_store_key",
    "batches_config_key",
    "cancel",
    "cursor",
    "kept_seconds",
    "kept_until",
    "live_file",
    "owned_batch",
    "owner_of",
    "page",
    "page_limit",
    "send_file",
    "setup_batch_routes",
    "task_problem",
]

batch_store_key = web.AppKey("batch_store_key", Batches)
batch_runner_key = web.AppKey("batch_runner_key", BatchRunner)
batches_config_key = web.AppKey("batches_config_key", BatchesSection)


def owner_of(request: web.Request) -> str:
    """Who owns what ``request`` creates: its key's name ("" without keys)."""
    key = request.get(request_key_key)
    return key.name if key is not None else ""


def page_limit(request: web.Request, default: int, most: int) -> int:
    """The ``limit`` query parameter: ``default`` when absent. :raises InvalidRequest: not 1 to ``most``."""
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"limit: a whole number from 1 to {most}", param="limit")
    return int(raw)


def cursor(request: web.Request, name: str) -> str:
    """The paging cursor query parameter ``name`` (``after``, ``after_id``, …): an id, or "" when absent.

    :raises InvalidRequest: it is not an id helexa hands out."""
    value = request.query.get(name, "")
    if value and not valid_id(value):
        raise InvalidRequest(f"{name}: the id of an object of another page", param=name)
    return value


def page(objects: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """A page of a listing, as OpenAI's APIs answer one."""
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": more,
    }


# ------------------------------------------------------------------------------------------------ shared pieces


async def live_file(store: Batches, file: str) -> dict[str, Any] | None:
    """File ``file``'s record, unless there is none or it expired (the runner deletes expired files soon after;
    until then they are gone for the API)."""
    record = await store.get_file(file) if valid_id(file) else None
    if record is None or (record["expires_at"] is not None and record["expires_at"] <= time.time()):
        return None
    return record


def kept_seconds(request: web.Request, seconds: int | None) -> int | None:
    """How long a file made now is kept: ``seconds``, as the client asked, else ``[batches] keep_files_days``
    (``None``: until deleted)."""
    if seconds is not None:
        return seconds
    days = request.app[batches_config_key].keep_files_days
    return days * 86400 if days else None


def kept_until(request: web.Request, seconds: int | None) -> int | None:
    """When a file made now is deleted (a Unix time; ``None``: never): see :func:`kept_seconds`."""
    kept = kept_seconds(request, seconds)
    return int(time.time()) + kept if kept is not None else None


async def send_file(
    request: web.Request, record: dict[str, Any], content_type: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    """Answer ``request`` with stored file ``record``, piece by piece as the store gives it (never read whole)."""
    response = web.StreamResponse(
        headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff", **(headers or {})}
    )
    response.content_length = record["bytes"]
    pieces = request.app[batch_store_key].content(record["id"])
    first = await anext(pieces, b"")  # a store that does not answer is an error before the head, not a cut body
    await response.prepare(request)
    await response.write(first)
    async for piece in pieces:
        await response.write(piece)
    await response.write_eof()
    return response


# -------------------------------------------------------------------------------------------------------- batches


class ExpiresAfter(WireStruct):
    """``expires_after`` / ``output_expires_after``: kept this many seconds after ``anchor``."""

    anchor: Annotated[str, msgspec.Meta(max_length=32)]
    seconds: int


class CreateBatch(WireStruct):
    """What ``POST /v1/batches`` reads."""

    input_file_id: Annotated[str, msgspec.Meta(max_length=64)]
    endpoint: Annotated[str, msgspec.Meta(max_length=64)]
    completion_window: Annotated[str, msgspec.Meta(max_length=16)] = "24h"
    metadata: (
        Annotated[
            dict[Annotated[str, msgspec.Meta(max_length=64)], Annotated[str, msgspec.Meta(max_length=512)]],
            msgspec.Meta(max_length=16),
        ]
        | None
    ) = None
    output_expires_after: ExpiresAfter | None = None


_create_decoder = msgspec.json.Decoder(CreateBatch)


def task_problem(request: web.Request, model: str, task: str) -> tuple[str, str] | None:
    """``(code, message)`` when ``model`` is unknown, or started for another task than ``task``; else ``None``."""
    registry = request.app[router_key].registry
    resolved = registry.resolve(model)
    entry = registry.catalogue.get(resolved)
    if entry is None and not registry.replicas(resolved):
        return (
            "model_not_found",
            f"model {model[:80]!r} is not in the catalogue and not loaded; GET /v1/models lists them",
        )
    if entry is not None and entry.task != task:
        return "model_cannot_serve_endpoint", f"model {model[:80]!r} is started for {entry.task!r}, not {task!r}"
    return None


async def create_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches``: a batch of the requests in an uploaded file."""
    req = decode_request_body(_create_decoder, await read_body(request))
    store, config = request.app[batch_store_key], request.app[batches_config_key]
    if req.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"endpoint: helexa runs batches for {', '.join(ENDPOINTS)} (got {req.endpoint[:64]!r})", param="endpoint"
        )
    try:
        window = completion_window_seconds(req.completion_window, config.max_completion_hours)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="completion_window") from None
    output_seconds = None
    if req.output_expires_after is not None:
        try:
            output_seconds = expiry_seconds(req.output_expires_after.anchor, req.output_expires_after.seconds)
        except ValueError as exc:
            raise InvalidRequest(f"output_expires_after.{exc}", param="output_expires_after") from None
    record = await live_file(store, req.input_file_id)
    if record is None or record["owner"] != owner_of(request):
        raise NotFound(f"no such file: {req.input_file_id[:80]!r}", param="input_file_id", code="file_not_found")
    if record["purpose"] != "batch":
        raise InvalidRequest(f"file {record['id']} is not a batch input (purpose {record['purpose']!r})")
    data = await store.read_file(record["id"], config.max_file_mb * 1024 * 1024)
    parsed = parse_input(data, req.endpoint, config.max_lines, request.app[max_body_key])
    if not parsed.errors and (problem := task_problem(request, parsed.model, ENDPOINTS[req.endpoint])):
        code, message = problem
        if code == "model_cannot_serve_endpoint":
            message += f": {req.endpoint} needs a model with task = {ENDPOINTS[req.endpoint]!r}"
        parsed.errors.append(LineError(code, message, 1, "body.model"))
        parsed.lines = []
    batch = await store.create_batch(
        NewBatch(
            owner_of(request),
            req.endpoint,
            record["id"],
            req.completion_window,
            window,
            req.metadata,
            parsed,
            kept_seconds(request, output_seconds),
        )
    )
    if (runner := request.app.get(batch_runner_key)) is not None:
        runner.wake.set()
    return json_response(batch_object(batch))


async def owned_batch(request: web.Request, wanted: str, *, messages: bool | None, anyone: bool = False) -> dict:
    """Batch ``wanted``, when the request's key owns it (``anyone``: an operator's view) and it is of the API
    asked: an Anthropic message batch (``messages``), an OpenAI one (not ``messages``), either (``None``).

    :raises NotFound: otherwise, as for an id that does not exist.
    """
    record = await request.config_dict[batch_store_key].get_batch(wanted) if valid_id(wanted) else None
    if (
        record is None
        or (not anyone and record["owner"] != owner_of(request))
        or (messages is not None and (record["endpoint"] == MESSAGES) != messages)
    ):
        raise NotFound(f"no such batch: {wanted[:80]!r}", param="batch_id", code="batch_not_found")
    return record


async def get_batch(request: web.Request) -> web.Response:
    """``GET /v1/batches/{id}``."""
    return json_response(batch_object(await owned_batch(request, request.match_info["batch_id"], messages=False)))


async def list_batches(request: web.Request) -> web.Response:
    """``GET /v1/batches[?limit=&after=]``: the key's batches, newest first."""
    records, more = await request.app[batch_store_key].list_batches(
        owner_of(request), cursor(request, "after"), page_limit(request, 20, 100), messages=False
    )
    return json_response(page([batch_object(r) for r in records], more))


async def cancel(request: web.Request, record: dict[str, Any]) -> dict[str, Any]:
    """Cancel batch ``record``: no line starts any more; the ones running end, then it is ``cancelled`` with
    their answers in its output file. The batch as it is now.

    :raises Conflict: it ended already.
    """
    moved = await request.config_dict[batch_store_key].move(record["id"], "cancelling", ("validating", "in_progress"))
    if moved is None:  # deleted meanwhile
        raise NotFound(f"no such batch: {record['id']}", param="batch_id", code="batch_not_found")
    if moved["status"] != "cancelling":
        raise Conflict(f"batch {record['id']} is {moved['status']}: only a batch in progress can be cancelled")
    if (runner := request.config_dict.get(batch_runner_key)) is not None:
        runner.wake.set()
    return moved


async def cancel_batch(request: web.Request) -> web.Response:
    """``POST /v1/batches/{id}/cancel``."""
    record = await owned_batch(request, request.match_info["batch_id"], messages=False)
    return json_response(batch_object(await cancel(request, record)))


async def admin_list_batches(request: web.Request) -> web.Response:
    """``GET /admin/batches[?limit=&after=]``: every key's batches, newest first, each with its ``owner`` (what
    ``helexa batches list`` shows)."""
    records, more = await request.config_dict[batch_store_key].list_batches(
        None, cursor(request, "after"), page_limit(request, 20, 100)
    )
    return json_response(page([batch_object(r) | {"owner": r["owner"]} for r in records], more))


async def admin_cancel_batch(request: web.Request) -> web.Response:
    """``POST /admin/batches/{id}/cancel``: an operator cancels anyone's batch, of either API (``helexa batches
    cancel``)."""
    record = await owned_batch(request, request.match_info["batch_id"], messages=None, anyone=True)
    return json_response(batch_object(await cancel(request, record)))


def setup_batch_routes(app: web.Application) -> None:
    """Attach ``/v1/batches`` to ``app`` (its ``batch_store_key`` and ``batches_config_key`` set); the operator's
    routes (:func:`admin_list_batches`, :func:`admin_cancel_batch`) are ``/admin``'s."""
    r = app.router
    r.add_post("/v1/batches", create_batch)
    r.add_get("/v1/batches", list_batches)
    r.add_get("/v1/batches/{batch_id}", get_batch)
    r.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
