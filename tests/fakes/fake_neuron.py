"""A fake neuron: the neuron API as an in-process aiohttp app, with controls for fault injection.

It speaks the real wire types, keeps models in memory, and serves OpenAI chat streams itself. Tests serve it
with ``aiohttp_server`` and read its counters (``loads``, ``unloads``, ``auth_seen``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import msgspec
from aiohttp import web

from helexa.wire.neuron import (
    DeviceHealth,
    DeviceInfo,
    Discovery,
    HostInfo,
    LoadRequest,
    LoadResponse,
    ModelInfo,
    ModelList,
    ModelStatus,
    NeuronHealth,
    UnloadRequest,
)


@dataclass
class FakeNeuron:
    """State and knobs of one fake neuron."""

    name: str
    devices: list[int] = field(default_factory=lambda: [24000])  # total MiB per GPU; [] = CPU-only
    harnesses: list[str] = field(default_factory=lambda: ["vllm", "llamacpp"])
    load_delay: float = 0.0
    reject: dict | None = None  # a 422 error body to answer loads with
    reply: str = "Hello from the fake neuron"
    chunk_delay: float = 0.0
    die_after_chunks: int = 0  # close the connection mid-stream after N chunks
    hang_after_chunks: int = -1  # freeze (like SIGSTOP) after N chunks of a stream; 0 = before any answer
    frozen: bool = False  # every endpoint hangs: a neuron under SIGSTOP
    endless_event: int = 0  # a stream that sends this many MiB of one event that never ends (no blank line)
    slow_marker: str = ""  # a chat request whose body holds this text waits slow_seconds before its answer begins
    slow_seconds: float = 0.0
    models: dict[str, ModelInfo] = field(default_factory=dict)
    vram: dict[str, int] = field(default_factory=dict)  # model -> MiB used on device 0
    loads: list[str] = field(default_factory=list)
    unloads: list[tuple[str, bool]] = field(default_factory=list)
    served: list[str] = field(default_factory=list)
    chat_starts: list[tuple[float, bytes]] = field(default_factory=list)  # (monotonic time, body) per chat request
    auth_seen: list[str] = field(default_factory=list)
    rerank_bodies: list[dict] = field(default_factory=list)
    rerank_answer: dict | None = None
    log_requests: list[str] = field(default_factory=list)  # the raw paths of GET /models/{id}/logs
    hung: asyncio.Event = field(default_factory=asyncio.Event)  # set when it starts hanging (freeze)
    ram_mb: int = 16000
    started: float = field(default_factory=time.monotonic)

    def preload(self, model_id: str, vram_mb: int = 0) -> None:
        self.models[model_id] = ModelInfo(
            id=model_id,
            harness="vllm",
            status=ModelStatus.LOADED,
            devices=[0] if self.devices else [],
            vram_used_mb=vram_mb,
            loaded_at=time.time(),
        )
        self.vram[model_id] = vram_mb

    def used(self) -> int:
        return sum(self.vram.values())

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/discovery", self.discovery)
        r.add_get("/health", self.health)
        r.add_get("/models", self.list_models)
        r.add_post("/models/load", self.load)
        r.add_post("/models/unload", self.unload)
        r.add_get("/models/{model_id:.+}/logs", self.logs)
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/v1/embeddings", self.embeddings)
        r.add_post("/v1/rerank", self.rerank)
        r.add_post("/v1/score", self.score)
        return app

    async def rerank(self, request):
        """As an engine's /v1/rerank: a document's score is how many of the query's words it holds (an order a
        test can predict); ``rerank_answer`` replaces the answer (a hostile engine)."""
        body = await request.json()
        self.served.append(body["model"])
        self.rerank_bodies.append(body)
        if self.rerank_answer is not None:
            return web.json_response(self.rerank_answer)
        words = set(body["query"].lower().split())
        results = [
            {"index": i, "relevance_score": float(len(words & set(doc.lower().split())))}
            for i, doc in enumerate(body["documents"])
        ]
        return web.json_response({"results": results, "usage": {"prompt_tokens": 11, "total_tokens": 11}})

    async def score(self, request):
        body = await request.json()
        self.served.append(body["model"])
        return web.json_response(
            {"object": "list", "model": body["model"], "data": [{"index": 0, "object": "score", "score": 0.5}]}
        )

    async def logs(self, request):
        self.log_requests.append(request.raw_path)
        model_id = request.match_info["model_id"]
        if model_id not in self.models:
            return web.json_response({"error": {"message": "no such model", "type": "not_found_error"}}, status=404)
        return web.Response(text=f"engine log of {model_id}\n", content_type="text/plain")

    async def discovery(self, request):
        devices = [DeviceInfo(index=i, name="Fake GPU", vram_total_mb=t) for i, t in enumerate(self.devices)]
        body = Discovery(
            hostname=self.name,
            devices=devices,
            harnesses=self.harnesses,
            version="0.0.0",
            host=HostInfo(cpu_count=2, ram_total_mb=self.ram_mb, ram_available_mb=self.ram_mb - self.used()),
        )
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def freeze(self) -> None:
        """Hang like a SIGSTOPped process: never answer (until the test ends). ``hung`` is set once it does."""
        self.frozen = True
        self.hung.set()
        await asyncio.Event().wait()

    async def health(self, request):
        if self.frozen:
            await self.freeze()
        devices = [
            DeviceHealth(
                index=i, vram_used_mb=self.used() if i == 0 else 0, vram_free_mb=t - (self.used() if i == 0 else 0)
            )
            for i, t in enumerate(self.devices)
        ]
        host = HostInfo(cpu_count=2, ram_total_mb=self.ram_mb, ram_available_mb=self.ram_mb - self.used())
        body = NeuronHealth(uptime_s=time.monotonic() - self.started, devices=devices, host=host)
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    async def list_models(self, request):
        return web.Response(
            body=msgspec.json.encode(ModelList(models=list(self.models.values()))), content_type="application/json"
        )

    async def load(self, request):
        self.auth_seen.append(request.headers.get("Authorization", ""))
        req = msgspec.json.decode(await request.read(), type=LoadRequest)
        self.loads.append(req.model_id)
        if self.reject is not None:
            return web.json_response({"error": {**self.reject, "model_id": req.model_id}}, status=422)
        self.models[req.model_id] = ModelInfo(id=req.model_id, harness=req.harness, status=ModelStatus.LOADING)
        await asyncio.sleep(self.load_delay)
        self.preload(req.model_id, req.vram_mb)
        return web.Response(
            body=msgspec.json.encode(LoadResponse(model_id=req.model_id, status=ModelStatus.LOADED)),
            content_type="application/json",
        )

    async def unload(self, request):
        req = msgspec.json.decode(await request.read(), type=UnloadRequest)
        self.unloads.append((req.model_id, req.stop))
        self.models.pop(req.model_id, None)
        self.vram.pop(req.model_id, None)
        return web.json_response({"model_id": req.model_id, "status": "unloaded"})

    async def chat(self, request):
        if self.frozen or self.hang_after_chunks == 0:
            await self.freeze()
        self.auth_seen.append(request.headers.get("Authorization", ""))
        raw = await request.read()
        self.chat_starts.append((time.monotonic(), raw))
        if self.slow_marker and self.slow_marker.encode() in raw:
            await asyncio.sleep(self.slow_seconds)  # a long prefill: this request only, the neuron answers polls
        body = json.loads(raw)
        model = body["model"]
        if model not in self.models:  # as a neuron answers for a model it does not hold
            error = {"message": f"model {model} not loaded", "type": "not_found_error", "code": "model_not_found"}
            return web.json_response({"error": error}, status=404, headers={"x-helexa-origin": "neuron"})
        self.served.append(model)
        usage = {
            "prompt_tokens": 7,
            "completion_tokens": len(self.reply.split()),
            "total_tokens": 7 + len(self.reply.split()),
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "c1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": self.reply}, "finish_reason": "stop"}
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "x-helexa-origin": "engine"})
        await resp.prepare(request)
        base = {"id": "c1", "object": "chat.completion.chunk", "model": model}
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}
            for w in self.reply.split()
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({**base, "choices": [], "usage": usage})
        if self.endless_event:
            await resp.write(b'data: {"choices": [{"delta": {"content": "')
            for _ in range(self.endless_event):
                await resp.write(b"x" * (1 << 20))
            return resp
        for n, event in enumerate(events):
            if n == self.hang_after_chunks:
                await self.freeze()
            if self.die_after_chunks and n == self.die_after_chunks:
                request.transport.close()
                return resp
            await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def embeddings(self, request):
        body = await request.json()
        self.served.append(body["model"])
        return web.json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}],
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
