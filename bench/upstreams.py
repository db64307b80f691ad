"""Processes the gateway benchmark runs against: a fast fake neuron, and a bare aiohttp pass-through floor.

python bench/upstreams.py neuron --port P [--chunks 64 --pace-ms 2]

The fake neuron serves two models: ``bench-model`` streams its chunks as fast as it can, ``bench-paced`` one
every ``--pace-ms`` (an engine generating tokens).
python bench/upstreams.py floor --port P --upstream http://127.0.0.1:Q
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from aiohttp import web

MODEL = "bench-model"
PACED = "bench-paced"


def neuron_app(chunks: int, pace_s: float) -> web.Application:
    """Just enough of the neuron API for a gateway, with a model that answers at once."""
    started = time.monotonic()
    reply = {
        "id": "c1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    reply_bytes = json.dumps(reply, separators=(",", ":")).encode()
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "tok "}, "finish_reason": None}],
    }
    chunk_bytes = b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
    usage = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": chunks, "total_tokens": 5 + chunks},
    }
    usage_bytes = b"data: " + json.dumps(usage, separators=(",", ":")).encode() + b"\n\n"

    async def discovery(request):
        return web.json_response(
            {
                "hostname": "bench",
                "devices": [],
                "harnesses": ["vllm"],
                "version": "0",
                "host": {"cpu_count": 2, "ram_total_mb": 1000, "ram_available_mb": 1000},
            }
        )

    async def health(request):
        return web.json_response(
            {
                "uptime_s": time.monotonic() - started,
                "devices": [],
                "host": {"cpu_count": 2, "ram_total_mb": 1000, "ram_available_mb": 1000},
            }
        )

    async def models(request):
        return web.json_response({"models": [{"id": m, "harness": "vllm", "status": "loaded"} for m in (MODEL, PACED)]})

    async def chat(request):
        body = json.loads(await request.read())
        if not body.get("stream"):
            return web.Response(body=reply_bytes, content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        pace = pace_s if body.get("model") == PACED else 0.0
        for _ in range(chunks):
            await resp.write(chunk_bytes)
            if pace:
                await asyncio.sleep(pace)
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(usage_bytes)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/discovery", discovery)
    app.router.add_get("/health", health)
    app.router.add_get("/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def floor_app(upstream: str) -> web.Application:
    """The floor: the least an aiohttp pass-through can do (one session, bytes through, stream relayed)."""

    async def ctx(app):
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app["session"].close()

    async def proxy(request):
        body = await request.read()
        async with request.app["session"].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status, content_type=up.content_type)
            resp = web.StreamResponse(status=up.status, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for data in up.content.iter_any():
                await resp.write(data)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(ctx)
    app.router.add_post("/v1/chat/completions", proxy)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=["neuron", "floor"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", default="")
    p.add_argument("--chunks", type=int, default=64)
    p.add_argument("--pace-ms", type=float, default=2.0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    app = neuron_app(args.chunks, args.pace_ms / 1000) if args.kind == "neuron" else floor_app(args.upstream)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
