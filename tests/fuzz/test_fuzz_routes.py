"""A seeded, time-bounded fuzz run over every route of both daemons: no input may produce a 5xx.

Requests are mutations of a valid request per route — a field replaced by random JSON, removed, or given a
wrong type deep inside, bodies truncated, nested thousands deep or not UTF-8, odd path parameters — plus raw
random bytes. Every answer must be a non-5xx; every error must be JSON in the envelope of its API (Anthropic's
on ``/v1/messages``). Afterwards both daemons still answer a good request. The gateway runs without keys (the
default of ``--role both``); the fake hub serves one repository whose listing names files outside the cache,
and nothing may appear there. ``HELEXA_FUZZ_REQUESTS`` and
``HELEXA_FUZZ_SEED`` change the run (defaults: 6000 requests, seed 20261124).
"""

from __future__ import annotations

import json
import os
import random
import time
from urllib.parse import quote

import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from helexa_llamacpp import LlamaCpp
from helexa_vllm import Vllm
from tests.conftest import engine_ports, make_config
from tests.fakes.fake_harness import FakeHarness
from tests.fakes.fake_hub import FakeHub, point_huggingface_hub_at

REQUESTS = int(os.environ.get("HELEXA_FUZZ_REQUESTS", "6000"))
SEED = int(os.environ.get("HELEXA_FUZZ_SEED", "20261124"))
TIME_LIMIT_S = 150.0

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
GATEWAY_POSTS = {
    "/v1/chat/completions": {"model": "m", "messages": MESSAGES, "stream": True, "tools": TOOLS},
    "/v1/completions": {"model": "m", "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": "m", "input": "hi"},
    "/v1/messages": {
        "model": "m",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}, {"role": "system", "content": "s"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": '{"session_id": "s"}'},
    },
    "/v1/messages/count_tokens": {"model": "m", "messages": MESSAGES},
    "/v1/responses": {
        "model": "m",
        "input": [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "x"}]}],
        "tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "g"}]}],
        "reasoning": {"summary": "auto"},
        "stream": True,
    },
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1, "return_documents": True},
    "/rerank": {"model": "m", "query": "q", "documents": ["a"]},
    "/v2/rerank": {"model": "m", "query": "q", "documents": ["a", "b"], "top_n": 2},
    "/v1/score": {"model": "m", "text_1": "q", "text_2": ["a", "b"]},
    "/v1/batches": {
        "input_file_id": "file-000000000000000000000000",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "v"},
        "output_expires_after": {"anchor": "created_at", "seconds": 3600},
    },
    "/v1/batches/batch_000000000000000000000000/cancel": {},
    "/v1/messages/batches": {
        "requests": [
            {"custom_id": "a-1", "params": {"model": "m", "max_tokens": 4, "messages": MESSAGES}},
            {"custom_id": "b_2", "params": {"model": "m", "max_tokens": 4, "messages": MESSAGES, "stream": False}},
        ]
    },
    "/v1/messages/batches/msgbatch_000000000000000000000000/cancel": {},
    "/admin/batches/m/cancel": {},
    # a multipart upload (the loop wraps the mutated bytes in a form with a random file name)
    "/v1/files": {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
    "/admin/models/m/load": {},
    "/admin/models/m/unload": {},
    "/ui/login": {"key": "x"},
    "/ui/models/m/load": {},
    "/ui/models/m/unload": {},
    "/ui/logout": {},
}
NEURON_POSTS = {
    "/models/load": {"model_id": "m", "harness": "fake", "source": "nope.gguf", "options": {"flags": []}},
    # llama.cpp's typed options (nothing here may become an argv element unchecked)
    "/models/load?llamacpp": {
        "model_id": "m",
        "harness": "llamacpp",
        "source": "nope.gguf",
        "options": {"ctx_size": 0, "kv_unified": True, "temperature": 0.2, "top_p": 0.9, "repeat_penalty": 1.1},
    },
    # a gang member (the neuron joins gangs: multi_host on); a follower names the head and its versions
    "/models/load?rank": {
        "model_id": "m",
        "harness": "vllm",
        "source": "nope",
        "hosts": 2,
        "options": {"max_model_len": 512},
        "rank": {
            "gang": "g1",
            "rank": 1,
            "size": 2,
            "peers": ["127.0.0.1", "127.0.0.2"],
            "master_addr": "127.0.0.1",
            "master_port": 29500,
            "versions": {"vllm": "0.32.0", "torch": "2.9.0"},
        },
    },
    "/models/unload": {"model_id": "m", "stop": True},
    "/models/unload?old": {"model_id": "m", "full": True},
    "/models/pull": {"source": "hf:acme/m-GGUF", "quant": "Q4_K_M", "harness": "fake", "wait": True},
    # a repository whose listing is hostile (see the daemons fixture): refused, nothing written outside the cache
    "/models/pull?from=evil": {"source": "hf:evil/x-GGUF", "quant": "Q4_K_M", "harness": "fake", "wait": True},
    "/tokenize": {"model": "m", "messages": MESSAGES},
    "/v1/chat/completions": {"model": "m", "messages": MESSAGES},
    "/v1/completions": {"model": "m", "prompt": "x"},
    "/v1/embeddings": {"model": "m", "input": "x"},
    "/v1/rerank": {"model": "m", "query": "q", "documents": ["a", "b"]},
    "/v1/score": {"model": "m", "text_1": "q", "text_2": "a"},
}
GATEWAY_GETS = ["/v1/models", "/v1/models/{id}", "/fleet", "/healthz", "/version", "/", "/nope/{id}", "/ui"]
GATEWAY_GETS += ["/ui?note={id}", "/ui/models/{id}/logs?neuron={id}", "/admin/models/{id}/logs?lines={id}"]
GATEWAY_GETS += ["/admin/models/{id}/logs?rank={id}", "/admin/models/m/logs?rank=1&lines=5"]
GATEWAY_GETS += ["/v1/files", "/v1/files/{id}", "/v1/files/{id}/content", "/v1/batches", "/v1/batches/{id}"]
GATEWAY_GETS += ["/v1/files?limit={id}&after={id}&order={id}&purpose={id}", "/v1/batches?limit={id}&after={id}"]
GATEWAY_GETS += ["/admin/batches?limit={id}&after={id}", "/v1/messages/batches?limit={id}&after_id={id}"]
GATEWAY_GETS += ["/v1/messages/batches/{id}", "/v1/messages/batches/{id}/results"]
NEURON_GETS = ["/models", "/models/{id}/endpoint", "/models/{id}/logs", "/discovery", "/health", "/v1/models", "/pulls"]


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**63, -(2**70), 10**30, 7])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300, 3.0])
    if kind in (4, 5):
        return random_text(rng)
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {random_text(rng): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"type": rng.choice(["text", "image", "tool_use", "function", "namespace", "web_search", "bogus"])}


def random_text(rng: random.Random) -> str:
    pool = ["", "m", "x" * rng.randrange(1, 600), "\u0000", "../../etc/passwd", "é🙂", "\ud800"[:0], "a/b", " ", "\n"]
    pool += ["user", "assistant", "system", "developer", "tool", "auto", "any", "none", "enabled", "adaptive"]
    pool += ["fe80::1%x --trust-remote-code", "127.0.0.1", "::1"]  # an IPv6 scope id carrying argv
    return rng.choice(pool)


def paths_of(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_of(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_of(v, (*prefix, i))


def mutate(rng: random.Random, template: dict) -> bytes:
    body = json.loads(json.dumps(template))
    for _ in range(rng.randrange(1, 4)):
        path = rng.choice(list(paths_of(body)))
        if not path:
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        action = rng.randrange(4)
        if action == 0:
            parent[path[-1]] = random_json(rng)
        elif action == 1 and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == 2 and isinstance(parent, dict):
            parent[random_text(rng)] = random_json(rng)
        else:
            parent[path[-1]] = [parent[path[-1]]] * rng.randrange(0, 3)
    raw = json.dumps(body, ensure_ascii=rng.random() < 0.5).encode()
    shape = rng.randrange(12)
    if shape == 0:
        return raw[: rng.randrange(len(raw) + 1)]  # truncated
    if shape == 1:
        return raw.replace(b'"m"', b'"m\xff\xfe"', 1)  # not UTF-8
    if shape == 2:
        depth = rng.choice([50, 5000, 20000])
        return raw[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if shape == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    if shape == 4:
        return raw.replace(b"true", b"NaN", 1)
    if shape == 5 and raw.startswith(b"{"):  # a key spelled with escapes decodes as the key it spells
        options = rng.choice([b"null", b'{"include_usage": false}', b"[]", b'"x"'])
        return b'{"stream_\\u006fptions": ' + options + b", " + raw[1:]
    return raw


def upload_form(rng: random.Random, content: bytes) -> tuple[bytes, str]:
    """A multipart form as the SDKs send it (purpose, expires_after, then file), its parts sometimes odd, cut or
    missing."""
    name = random_text(rng).encode("utf-8", "replace").replace(b'"', b"")
    purpose = rng.choice([b"batch", b"batch", b"fine-tune", b"", b"x" * 100])
    parts = [
        b'Content-Disposition: form-data; name="purpose"\r\n\r\n' + purpose,
        b'Content-Disposition: form-data; name="file"; filename="' + name + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content,
    ]
    if rng.random() < 0.2:
        parts.pop(rng.randrange(2))
    if rng.random() < 0.3:  # the SDKs' expires_after fields, sometimes odd
        anchor = rng.choice([b"created_at", b"last_active_at", b"", random_text(rng).encode("utf-8", "replace")])
        seconds = rng.choice([b"3600", b"10", b"99999999999", b"-1", b"x", b""])
        parts.insert(1, b'Content-Disposition: form-data; name="expires_after[anchor]"\r\n\r\n' + anchor)
        parts.insert(2, b'Content-Disposition: form-data; name="expires_after[seconds]"\r\n\r\n' + seconds)
    body = b"".join(b"--xb\r\n" + p + b"\r\n" for p in parts) + b"--xb--\r\n"
    if rng.random() < 0.2:
        body = body[: rng.randrange(len(body) + 1)]
    return body, "multipart/form-data; boundary=" + rng.choice(["xb", "xb", "", "other"])


def check_answer(path: str, status: int, content_type: str, text: str) -> None:
    assert status < 500, f"{path}: {status} {text[:300]}"
    if status == 401 and path.startswith("/ui") and content_type == "text/html":
        assert 'name="key"' in text  # the fleet page's sign-in form, for browsers
        return
    if status >= 400:
        assert content_type == "application/json", f"{path}: {status} {content_type} {text[:200]}"
        body = json.loads(text)
        # a body aiohttp cannot decode as it reads the request (a broken Content-Encoding in the first packet) is
        # refused before the request, and its path, exist: OpenAI's envelope then, on any path
        unread = (
            body.get("error", {}).get("code") == "bad_http_request" if isinstance(body.get("error"), dict) else False
        )
        if path.startswith("/v1/messages") and not unread:
            assert body["type"] == "error" and body["error"]["type"] and body["error"]["message"], body
        else:
            assert body["error"]["message"] and body["error"]["type"], body
        assert len(text) < 4000, f"{path}: error echoed the input ({len(text)} chars)"


@pytest.fixture
async def daemons(aiohttp_client, aiohttp_server, tmp_path, version, monkeypatch):
    models = tmp_path / "models"
    models.mkdir()
    hub = FakeHub(
        repos={
            "acme/m-GGUF": {"m-Q4_K_M.gguf": b"GGUF" + b"\0" * 4096},
            "a/b": {"b.gguf": b"GGUF"},
            "evil/x-GGUF": {"x-Q4_K_M.gguf": b"GGUF" + b"\1" * 4096},
        },
        extra_siblings={
            "evil/x-GGUF": [
                {"rfilename": name, "size": 9, "lfs": {"sha256": "c" * 64, "size": 9, "pointerSize": 134}}
                for name in ("../../../../fuzz-planted-Q4_K_M.gguf", f"{tmp_path}/fuzz-planted-abs-Q4_K_M.gguf")
            ]
        },
    )
    point_huggingface_hub_at(monkeypatch, str((await aiohttp_server(hub.app())).make_url("")).rstrip("/"))
    section = {
        "model_dirs": [str(models)],
        "port_range": engine_ports(),
        "rank_port_range": engine_ports(),
        "hf_cache_dir": str(tmp_path / "hf"),
        "multi_host": True,
        "advertise_address": "127.0.0.2",
        "gang_peers": ["127.0.0.1", "127.0.0.2"],
    }
    neuron_cfg = make_config(neuron=section, models=[])
    harnesses = {"fake": FakeHarness, "llamacpp": LlamaCpp, "vllm": Vllm}
    neuron = await aiohttp_client(make_neuron_app(neuron_cfg, version, harnesses))
    gateway_cfg = make_config(
        neurons=[{"name": "n", "endpoint": str(neuron.make_url("")).rstrip("/")}],
        gateway={"poll_interval_seconds": 0.2},
        batches={"directory": str(tmp_path / "batches"), "max_file_mb": 1},
    )
    gateway = await aiohttp_client(make_gateway_app(gateway_cfg, version))
    gateway.tmp_path = tmp_path  # type: ignore[attr-defined]
    return gateway, neuron


async def test_no_input_makes_a_5xx_on_any_route(daemons):
    gateway, neuron = daemons
    rng = random.Random(SEED)
    targets = [(gateway, "POST", p, t) for p, t in GATEWAY_POSTS.items()]
    targets += [(neuron, "POST", p, t) for p, t in NEURON_POSTS.items()]
    targets += [(gateway, "GET", p, None) for p in GATEWAY_GETS] + [(neuron, "GET", p, None) for p in NEURON_GETS]
    began, sent, statuses = time.monotonic(), 0, {}
    while sent < REQUESTS and time.monotonic() - began < TIME_LIMIT_S:
        client, method, path, template = rng.choice(targets)
        url = path.replace("{id}", quote(random_text(rng) or "x", safe=""))
        url = url.replace("/m/", "/" + quote(random_text(rng) or "m", safe="") + "/") if rng.random() < 0.3 else url
        headers = {"Content-Type": rng.choice(["application/json"] * 8 + ["text/plain", "application/x-www-form"])}
        if rng.random() < 0.05:  # a body that does not decode ends the connection too: do not reuse it
            headers["Content-Encoding"] = rng.choice(["gzip", "deflate", "br", "bogus"])
            headers["Connection"] = "close"
        if method == "GET":
            resp = await client.get(url)
        elif path == "/v1/files" and rng.random() < 0.8:
            body, headers["Content-Type"] = upload_form(rng, mutate(rng, template))
            resp = await client.post(url, data=body, headers=headers)
        else:
            resp = await client.post(url, data=mutate(rng, template), headers=headers)
        text = await resp.text(errors="replace")
        check_answer(url, resp.status, resp.content_type, text)
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        sent += 1
    print(f"fuzz: {sent} requests in {time.monotonic() - began:.1f}s, statuses {dict(sorted(statuses.items()))}")
    assert sent >= min(REQUESTS, 5000), f"only {sent} requests in {TIME_LIMIT_S}s"
    assert len(statuses) > 3  # the mutations reached more than one kind of answer
    # both daemons serve on
    assert (await gateway.get("/v1/models")).status == 200
    assert (await neuron.get("/models")).status == 200
    resp = await gateway.post("/v1/messages", json={"model": "nope", "max_tokens": 4, "messages": MESSAGES})
    assert resp.status == 404
    # the hostile listing planted nothing, anywhere around the cache
    assert list(gateway.tmp_path.parent.rglob("fuzz-planted*")) == []
