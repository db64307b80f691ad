"""The OpenAI Files API: ``/v1/files`` (upload, list, get, content, delete), as the official SDKs call it — the
files batches are made of (:mod:`helexa.gateway.batch_routes`).

Files belong to the key that uploaded them (its name; one owner for all without keys): another key gets a 404 for
them, as for an id that does not exist. An upload is ``multipart/form-data`` (the SDKs' form), streamed to disk up
to ``[batches] max_file_mb``; it is kept for ``expires_after`` or ``[batches] keep_files_days``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web

from helexa.batches.contract import Batches
from helexa.batches.formats import expiry_seconds, file_object
from helexa.errors import InvalidRequest, NotFound, PayloadTooLarge
from helexa.gateway.batch_routes import (
    batch_store_key,
    batches_config_key,
    cursor,
    kept_until,
    live_file,
    owner_of,
    page,
    page_limit,
    send_file,
)
from helexa.server.app import json_response

__all__ = ["PURPOSES", "UPLOAD_PATH", "setup_file_routes"]

UPLOAD_PATH = "/v1/files"  # the one route that takes multipart/form-data (and a larger body)

PURPOSES = ("batch",)  # what helexa keeps files for
_FILENAME_MAX = 255
_FIELD_MAX = 64  # bytes of a form field other than the file
_FORM_FIELDS = frozenset({"purpose", "expires_after[anchor]", "expires_after[seconds]"})  # the upload's, but the file


async def _owned_file(request: web.Request) -> dict[str, Any]:
    """The file the path names, when the request's key owns it. :raises NotFound: otherwise."""
    file = request.match_info["file_id"]
    record = await live_file(request.app[batch_store_key], file)
    if record is None or record["owner"] != owner_of(request):
        raise NotFound(f"no such file: {file[:80]!r}", param="file_id", code="file_not_found")
    return record


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
        owner_of(request), purpose, cursor(request, "after"), page_limit(request, 10_000, 10_000), order == "asc"
    )
    return json_response(page([file_object(r) for r in records], more))


async def get_file(request: web.Request) -> web.Response:
    """``GET /v1/files/{id}``."""
    return json_response(file_object(await _owned_file(request)))


async def file_content(request: web.Request) -> web.StreamResponse:
    """``GET /v1/files/{id}/content``: the file as it is (sent in pieces, never read whole)."""
    record = await _owned_file(request)
    disposition = {"Content-Disposition": f'attachment; filename="{record["id"]}.jsonl"'}
    return await send_file(request, record, "application/octet-stream", disposition)


async def delete_file(request: web.Request) -> web.Response:
    """``DELETE /v1/files/{id}``."""
    record = await _owned_file(request)
    await request.app[batch_store_key].delete_file(record["id"])
    return json_response({"id": record["id"], "object": "file", "deleted": True})


def setup_file_routes(app: web.Application) -> None:
    """Attach ``/v1/files`` to ``app`` (its ``batch_store_key`` and ``batches_config_key`` set)."""
    r = app.router
    r.add_post(UPLOAD_PATH, upload)
    r.add_get(UPLOAD_PATH, list_files)
    r.add_get(UPLOAD_PATH + "/{file_id}", get_file)
    r.add_get(UPLOAD_PATH + "/{file_id}/content", file_content)
    r.add_delete(UPLOAD_PATH + "/{file_id}", delete_file)
