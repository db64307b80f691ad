"""The OpenAI Files and Batch APIs: ``/v1/files`` (upload, list, get, content, delete) and ``/v1/batches``
(create, get, list, cancel), as the official SDKs call them; the batches are run by
:mod:`helexa.gateway.batch_runner`.

Files and batches belong to the key that created them (its name; one owner for all without keys): another key
gets a 404 for them, as for an id that does not exist. An upload is ``multipart/form-data`` (the SDKs' form),
streamed to disk up to ``[batches] max_file_mb``; a batch's input file is checked whole when the batch is created
(a batch with bad lines is ``failed`` at once, its ``errors`` naming each line, as OpenAI reports them).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from aiohttp import BodyPartReader, web

from helexa.batches.contract import Batches, NewBatch
from helexa.batches.formats import (
    ENDPOINTS,
    MESSAGES,
    LineError,
    batch_object,
    completion_window_seconds,
    expiry_seconds,
    file_object,
    parse_input,
    valid_id,
)
from helexa.config import BatchesSection
from helexa.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge
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
    "kept_seconds",
    "kept_until",
    "live_file",
    "owned_batch",
    "owner_of",
    "send_file",
    "setup_batch_routes",
    "task_problem",
]

batch_store_key = web.AppKey("batch_store_key", Batches)
batch_runner_key = web.AppKey("batch_runner_key", BatchRunner)
batches_config_key = web.AppKey("batches_config_key", BatchesSection)

PURPOSES = ("batch",)  # what helexa keeps files for
_FILENAME_MAX = 255
_FIELD_MAX = 64  # bytes of a form field other than the file
_FORM_FIELDS = frozenset({"purpose", "expires_after[anchor]", "expires_after[seconds]"})  # the upload's, but the file


def owner_of(request: web.Request) -> str:
    """Who owns what ``request`` creates: its key's name ("" without keys)."""
    key = request.get(request_key_key)
    return key.name if key is not None else ""


def _limit(request: web.Request, default: int, most: int) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= most:
        raise InvalidRequest(f"limit: a whole number from 1 to {most}", param="limit")
    return int(raw)


def _after(request: web.Request) -> str:
    after = request.query.get("after", "")
    if after and not valid_id(after):
        raise InvalidRequest("after: the id of an object of an earlier page", param="after")
    return after


def _page(objects: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": more,
    }


# ---------------------------------------------------------------------------------------------------------- files


async def live_file(store: Batches, file: str) -> dict[str, Any] | None:
    """File ``file``'s record, unless there is none or it expired (the runner deletes expired files soon after;
    until then they are gone for the API)."""
    record = await store.get_file(file) if valid_id(file) else None
    if record is None or (record["expires_at"] is not None and record["expires_at"] <= time.time()):
        return None
    return record


async def _owned_file(request: web.Request) -> dict[str, Any]:
    """The file the path names, when the request's key owns it. :raises NotFound: otherwise."""
    file = request.match_info["file_id"]
    record = await live_file(request.app[batch_store_key], file)
    if record is None or record["owner"] != owner_of(request):
        raise NotFound(f"no such file: {file[:80]!r}", param="file_id", code="file_not_found")
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


def _clean_filename(name: str | None) -> str:
    """A client's file name as data: its last path part, printable, at most 255 characters."""
    base = re.split(r"[\\/]", name or "")[-1]
    return "".join(ch for ch in base if ch.isprintable())[:_FILENAME_MAX] or "upload.jsonl"


async def _field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(_FIELD_MAX + 1):
        data += chunk
        if len(data) > _FIELD_MAX:
            raise InvalidRequest(f"form field {part.name!r}: at most {_FIELD_MAX} bytes", param=part.name)
    return data.decode("utf-8", errors="replace").strip()


async def _chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(256 * 1024):
        yield chunk


async def _read_form(request: web.Request, store: Batches, max_mb: int) -> tuple[dict[str, str], str, tuple | None]:
    """``(fields, file name, staged upload or None)`` of the upload form (``fields``: ``purpose`` and
    ``expires_after[…]``); the file part goes to disk as it comes. The caller removes the staged file when it does
    not keep it.

    :raises InvalidRequest: the form cannot be read. :raises PayloadTooLarge: the file is over ``max_mb``.
    """
    fields: dict[str, str] = {}
    filename, staged = "", None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidRequest("nested multipart bodies are not accepted")
            if part.name in _FORM_FIELDS:
                fields[part.name] = await _field(part)
            elif part.name == "file" and staged is None:
                filename = _clean_filename(part.filename)
                staged = await store.stage(_chunks(part), max_mb * 1024 * 1024)
                if staged is None:
                    raise PayloadTooLarge(
                        f"the file is larger than {max_mb} MiB ([batches] max_file_mb): split it into several batches",
                        param="file",
                    )
            else:
                await part.release()  # other fields (expires_after, …) are not kept
    except (ValueError, RuntimeError, AssertionError, KeyError) as exc:  # aiohttp's multipart parser
        if staged is not None:
            staged[0].unlink(missing_ok=True)
        raise InvalidRequest(f"the multipart form cannot be read: {str(exc)[:120]}") from None
    except BaseException:
        if staged is not None:
            staged[0].unlink(missing_ok=True)
        raise
    return fields, filename, staged


def _expires_after(fields: dict[str, str]) -> int | None:
    """The seconds of the form's ``expires_after`` (``None``: not given). :raises InvalidRequest: not valid."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    try:
        return expiry_seconds(anchor or "", seconds or "")
    except ValueError as exc:
        raise InvalidRequest(f"expires_after.{exc}", param="expires_after") from None


async def upload(request: web.Request) -> web.Response:
    """``POST /v1/files`` (multipart: ``purpose``, ``file``): keep a file for a batch."""
    if request.content_type != "multipart/form-data":
        raise InvalidRequest("upload the file as multipart/form-data with the fields 'purpose' and 'file'")
    store = request.app[batch_store_key]
    fields, filename, staged = await _read_form(request, store, request.app[batches_config_key].max_file_mb)
    purpose = fields.get("purpose", "")
    try:
        expires_at = kept_until(request, _expires_after(fields))
        if purpose not in PURPOSES:
            raise InvalidRequest(
                f"purpose: helexa keeps files for the Batch API: purpose must be 'batch' (got {purpose[:40]!r})",
                param="purpose",
            )
        if staged is None:
            raise InvalidRequest("the form has no 'file' field", param="file")
        if not staged[1]:
            raise InvalidRequest("the file is empty", param="file")
        record = await store.add_file(owner_of(request), purpose, filename, *staged, expires_at=expires_at)
    except BaseException:
        if staged is not None:
            staged[0].unlink(missing_ok=True)
        raise
    return json_response(file_object(record))


async def list_files(request: web.Request) -> web.Response:
    """``GET /v1/files[?purpose=&limit=&after=&order=]``: the key's files."""
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("order: asc or desc", param="order")
    purpose = request.query.get("purpose", "")[:40]
    records, more = await request.app[batch_store_key].list_files(
        owner_of(request), purpose, _after(request), _limit(request, 10_000, 10_000), order == "asc"
    )
    return json_response(_page([file_object(r) for r in records], more))


async def get_file(request: web.Request) -> web.Response:
    """``GET /v1/files/{id}``."""
    return json_response(file_object(await _owned_file(request)))


async def file_content(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{id}/content``: the file as it is (sent in pieces, never read whole)."""
    record = await _owned_file(request)
    disposition = {"Content-Disposition": f'attachment; filename="{record["id"]}.jsonl"'}
    return await send_file(request, record, "application/octet-stream", disposition)


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


async def delete_file(request: web.Request) -> web.Response:
    """``DELETE /v1/files/{id}``."""
    record = await _owned_file(request)
    await request.app[batch_store_key].delete_file(record["id"])
    return json_response({"id": record["id"], "object": "file", "deleted": True})


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
        owner_of(request), _after(request), _limit(request, 20, 100), messages=False
    )
    return json_response(_page([batch_object(r) for r in records], more))


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
        None, _after(request), _limit(request, 20, 100)
    )
    return json_response(_page([batch_object(r) | {"owner": r["owner"]} for r in records], more))


async def admin_cancel_batch(request: web.Request) -> web.Response:
    """``POST /admin/batches/{id}/cancel``: an operator cancels anyone's batch, of either API (``helexa batches
    cancel``)."""
    record = await owned_batch(request, request.match_info["batch_id"], messages=None, anyone=True)
    return json_response(batch_object(await cancel(request, record)))


def setup_batch_routes(app: web.Application) -> None:
    """Attach ``/v1/files`` and ``/v1/batches`` to ``app`` (its ``batch_store_key`` and ``batches_config_key``
    set); the operator's routes (:func:`admin_list_batches`, :func:`admin_cancel_batch`) are ``/admin``'s."""
    r = app.router
    r.add_post("/v1/files", upload)
    r.add_get("/v1/files", list_files)
    r.add_get("/v1/files/{file_id}", get_file)
    r.add_get("/v1/files/{file_id}/content", file_content)
    r.add_delete("/v1/files/{file_id}", delete_file)
    r.add_post("/v1/batches", create_batch)
    r.add_get("/v1/batches", list_batches)
    r.add_get("/v1/batches/{batch_id}", get_batch)
    r.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
