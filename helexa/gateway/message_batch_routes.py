"""Anthropic's Message Batches API: ``/v1/messages/batches`` (create, list, retrieve, cancel, delete, results), as
the official ``anthropic`` SDKs call it, run like the OpenAI batches (:mod:`helexa.gateway.batch_runner`: idle
capacity, ``batch`` priority, each request once, resumed after a restart; the cluster's store when there is one).

A message batch is a stored batch of endpoint ``/v1/messages`` (formats: :mod:`helexa.batches.messages`); it
belongs to the key that created it, like an OpenAI batch, and is not seen through ``/v1/batches`` (nor these
routes an OpenAI batch). Errors are in Anthropic's envelope (the middleware's, for ``/v1/messages…``). Results
are served once it ended, as one JSONL file, each request's ``succeeded``, ``errored``, ``canceled`` or
``expired``.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from helexa.batches.contract import NewBatch
from helexa.batches.formats import FINAL_STATUSES, MESSAGES, TASKS, result_file_id
from helexa.batches.messages import MAX_PROBLEMS, CreateMessageBatch, message_batch_object, parse_requests
from helexa.errors import InvalidRequest, NotFound
from helexa.gateway.batch_routes import (
    batch_runner_key,
    batch_store_key,
    batches_config_key,
    cancel,
    cursor,
    kept_seconds,
    live_file,
    owned_batch,
    owner_of,
    page_limit,
    send_file,
    task_problem,
)
from helexa.server.app import json_response, max_body_key
from helexa.server.body import read_body
from helexa.wire import decode_request_body

__all__ = ["CREATE_PATH", "setup_message_batch_routes"]

CREATE_PATH = "/v1/messages/batches"  # the one JSON route with a larger body ([batches] max_file_mb)
_create_decoder = msgspec.json.Decoder(CreateMessageBatch)
WINDOW_HOURS = 24  # a message batch ends by this many hours after it was made (Anthropic's), or the config's most


async def create(request: web.Request) -> web.Response:
    """``POST /v1/messages/batches``: ``{"requests": [{"custom_id", "params"}, …]}``.

    :raises InvalidRequest: a request that cannot run (its index named); a model that is unknown or not a chat
        model. Nothing is kept then.
    """
    config = request.app[batches_config_key]
    body = await read_body(request, config.max_file_mb * 1024 * 1024)
    create_request = decode_request_body(_create_decoder, body)
    parsed = parse_requests(
        create_request,
        config.max_lines,
        request.app[max_body_key],
        lambda model: task_problem(request, model, TASKS[MESSAGES]),
    )
    if parsed.errors:
        shown = "; ".join(e.message for e in parsed.errors[:MAX_PROBLEMS])
        more = len(parsed.errors) - MAX_PROBLEMS
        raise InvalidRequest(shown + (f"; and {more} more" if more > 0 else ""), param="requests")
    hours = min(WINDOW_HOURS, config.max_completion_hours)
    batch = await request.app[batch_store_key].create_batch(
        NewBatch(owner_of(request), MESSAGES, "", f"{hours}h", hours * 3600, None, parsed, kept_seconds(request, None))
    )
    if (runner := request.app.get(batch_runner_key)) is not None:
        runner.wake.set()
    return json_response(message_batch_object(batch))


async def _batch(request: web.Request) -> dict[str, Any]:
    return await owned_batch(request, request.match_info["message_batch_id"], messages=True)


async def retrieve(request: web.Request) -> web.Response:
    """``GET /v1/messages/batches/{id}``."""
    return json_response(message_batch_object(await _batch(request)))


async def list_batches(request: web.Request) -> web.Response:
    """``GET /v1/messages/batches[?limit=&after_id=|before_id=]``: the key's message batches, newest first;
    ``after_id``: the page of older ones after that batch; ``before_id``: the page of newer ones before it."""
    after, before = cursor(request, "after_id"), cursor(request, "before_id")
    if after and before:
        raise InvalidRequest("give after_id or before_id, not both", param="before_id")
    records, more = await request.app[batch_store_key].list_batches(
        owner_of(request), after or before, page_limit(request, 20, 1000), messages=True, ascending=bool(before)
    )
    data = [message_batch_object(r) for r in (reversed(records) if before else records)]
    return json_response(
        {
            "data": data,
            "has_more": more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )


async def cancel_batch(request: web.Request) -> web.Response:
    """``POST /v1/messages/batches/{id}/cancel``: no request starts any more; it ends once those running did,
    the rest ``canceled``."""
    return json_response(message_batch_object(await cancel(request, await _batch(request))))


async def delete(request: web.Request) -> web.Response:
    """``DELETE /v1/messages/batches/{id}``: an ended batch and its results.

    :raises InvalidRequest: it has not ended (cancel it first).
    """
    record = await _batch(request)
    if record["status"] not in FINAL_STATUSES:  # processing_status is not "ended"
        raise InvalidRequest(
            f"batch {record['id']} is still processing: cancel it first, then delete it once it ended",
            param="message_batch_id",
        )
    await request.app[batch_store_key].delete_batch(record["id"])
    return json_response({"id": record["id"], "type": "message_batch_deleted"})


async def results(request: web.Request) -> web.StreamResponse:
    """``GET /v1/messages/batches/{id}/results``: the results file (JSONL), sent in pieces as it is stored.

    :raises InvalidRequest: the batch has not ended (it has no results yet).
    """
    record = await _batch(request)
    if record["status"] not in FINAL_STATUSES:  # processing_status is not "ended"
        raise InvalidRequest(
            f"batch {record['id']} has not ended: its results are there once processing_status is 'ended'",
            param="message_batch_id",
        )
    store = request.app[batch_store_key]
    file = await live_file(store, result_file_id(record["id"], "output"))
    if file is None:  # ended, its file not yet written (another gateway finishing it), or expired
        raise NotFound(
            f"batch {record['id']} has no results file: it expired ([batches] keep_files_days), or is being "
            "written (ask again in a moment)"
        )
    return await send_file(request, file, "application/binary")


def setup_message_batch_routes(app: web.Application) -> None:
    """Attach ``/v1/messages/batches…`` to ``app`` (the batch store and config set, as for
    :func:`~helexa.gateway.batch_routes.setup_batch_routes`)."""
    r = app.router
    r.add_post(CREATE_PATH, create)
    r.add_get(CREATE_PATH, list_batches)
    r.add_get(CREATE_PATH + "/{message_batch_id}", retrieve)
    r.add_delete(CREATE_PATH + "/{message_batch_id}", delete)
    r.add_post(CREATE_PATH + "/{message_batch_id}/cancel", cancel_batch)
    r.add_get(CREATE_PATH + "/{message_batch_id}/results", results)
