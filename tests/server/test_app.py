"""The shared aiohttp core: error envelopes for 400/404/405/413/500, headers, late stream errors, metrics."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from helexa.errors import InvalidRequest, NotFound, Overloaded
from helexa.server.app import base_app, metrics_app, registry_key


def make_app(version, max_body_bytes: int = 1024) -> web.Application:
    app = base_app(role="gateway", version=version, max_body_bytes=max_body_bytes)

    async def bad(request):
        raise InvalidRequest("'model' is required", param="model")

    async def echo(request):
        body = await request.read()
        return web.Response(body=body)

    async def boom(request):
        raise RuntimeError("secret internals")

    async def busy(request):
        raise Overloaded("queue full for model 'm'", retry_after=7)

    async def messages(request):
        raise NotFound("model 'x' not found")

    async def sse_fail(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"x":1}\n\n')
        raise NotFound("upstream vanished")

    async def sse_fail_anthropic(request):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"event: ping\ndata: {}\n\n")
        raise Overloaded("neuron went away")

    async def chunked_fail(request):
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError("mid-body failure")

    app.router.add_post("/v1/bad", bad)
    app.router.add_post("/v1/echo", echo)
    app.router.add_get("/v1/boom", boom)
    app.router.add_get("/v1/busy", busy)
    app.router.add_post("/v1/messages", messages)
    app.router.add_get("/v1/sse", sse_fail)
    app.router.add_get("/v1/messages/sse", sse_fail_anthropic)
    app.router.add_get("/v1/chunked", chunked_fail)
    return app


@pytest.fixture
async def client(aiohttp_client, version):
    return await aiohttp_client(make_app(version))


def assert_openai_envelope(body: dict, *, type_: str, code: str) -> dict:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert error["code"] == code
    assert error["message"]
    return error


async def test_typed_400_uses_the_openai_envelope(client):
    resp = await client.post("/v1/bad", json={})
    assert resp.status == 400
    assert resp.headers["x-helexa-origin"] == "gateway"
    error = assert_openai_envelope(await resp.json(), type_="invalid_request_error", code="invalid_request")
    assert error == {
        "message": "'model' is required",
        "type": "invalid_request_error",
        "param": "model",
        "code": "invalid_request",
    }


async def test_unknown_route_returns_openai_404(client):
    resp = await client.get("/v2/chat")
    assert resp.status == 404
    error = assert_openai_envelope(await resp.json(), type_="not_found_error", code="not_found")
    assert "/v1/models" in error["message"]


async def test_wrong_method_returns_405_with_allow(client):
    resp = await client.get("/v1/bad")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    error = assert_openai_envelope(await resp.json(), type_="invalid_request_error", code="invalid_request")
    assert "allowed: POST" in error["message"]


async def test_body_over_the_limit_returns_413_by_content_length(client):
    resp = await client.post("/v1/echo", data=b"x" * 2048)
    assert resp.status == 413
    error = assert_openai_envelope(await resp.json(), type_="invalid_request_error", code="invalid_request")
    assert "max_body_mb" in error["message"]


async def test_chunked_body_over_the_limit_returns_413(client):
    async def chunks():
        for _ in range(4):
            yield b"y" * 512

    resp = await client.post("/v1/echo", data=chunks())
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "invalid_request"


async def test_body_under_the_limit_passes(client):
    resp = await client.post("/v1/echo", data=b"z" * 1000)
    assert resp.status == 200
    assert await resp.read() == b"z" * 1000


async def test_unhandled_exception_is_a_500_without_internals(client, caplog):
    resp = await client.get("/v1/boom")
    assert resp.status == 500
    error = assert_openai_envelope(await resp.json(), type_="server_error", code="internal_error")
    rid = resp.headers["x-request-id"]
    assert rid in error["message"]
    assert "secret internals" not in error["message"]
    assert "secret internals" in caplog.text  # the log keeps the details


async def test_overloaded_sets_retry_after(client):
    resp = await client.get("/v1/busy")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    assert_openai_envelope(await resp.json(), type_="service_unavailable_error", code="overloaded")


async def test_anthropic_routes_use_the_anthropic_envelope(client):
    resp = await client.post("/v1/messages", json={})
    assert resp.status == 404
    assert await resp.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'x' not found"},
    }


async def test_error_after_sse_started_is_a_final_event(client):
    resp = await client.get("/v1/sse")
    assert resp.status == 200
    text = await resp.text()
    events = [e for e in text.split("\n\n") if e]
    assert events[0] == 'data: {"x":1}'
    assert events[-1].startswith('data: {"error":{"message":"upstream vanished","type":"not_found_error"')


async def test_error_after_anthropic_sse_started_is_an_error_event(client):
    resp = await client.get("/v1/messages/sse")
    text = await resp.text()
    assert text.endswith(
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"neuron went away"}}\n\n'
    )


async def test_error_after_a_non_sse_stream_started_aborts_the_connection(client):
    resp = await client.get("/v1/chunked")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    # and the server still serves
    assert (await client.get("/healthz")).status == 200


async def test_request_id_is_echoed_when_safe_and_generated_otherwise(client):
    resp = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert resp.headers["x-request-id"] == "abc-123"
    resp = await client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    generated = resp.headers["x-request-id"]
    assert generated != "bad id\twith spaces" and len(generated) == 16
    again = (await client.get("/healthz")).headers["x-request-id"]
    assert again != generated


async def test_healthz_and_version(client):
    assert await (await client.get("/healthz")).json() == {"status": "ok", "role": "gateway"}
    body = await (await client.get("/version")).json()
    assert body["version"] == "0.0.0-test"
    assert body["python"] == "3"


async def test_metrics_count_requests_by_route_pattern(client):
    await client.get("/healthz")
    await client.post("/v1/bad", json={})
    await client.get("/no/such/thing")
    text = await (await client.get("/metrics")).text()
    assert 'helexa_gateway_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'helexa_gateway_http_requests_total{method="POST",route="/v1/bad",status="400"} 1.0' in text
    assert 'helexa_gateway_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "helexa_gateway_http_request_duration_seconds_bucket" in text
    assert 'helexa_gateway_build_info{git_sha="unknown",python="3",version="0.0.0-test"} 1.0' in text


async def test_metrics_app_serves_another_apps_registry(aiohttp_client, version):
    api = base_app(role="gateway", version=version, max_body_bytes=1024, serve_metrics=False)
    metrics = await aiohttp_client(metrics_app(role="gateway", registry=api[registry_key]))
    api_client = await aiohttp_client(api)
    assert (await api_client.get("/metrics")).status == 404
    await api_client.get("/healthz")
    text = await (await metrics.get("/metrics")).text()
    assert 'route="/healthz"' in text
    assert (await metrics.get("/healthz")).status == 404


async def test_apps_have_independent_registries(aiohttp_client, version):
    a = await aiohttp_client(make_app(version))
    b = await aiohttp_client(make_app(version))
    await asyncio.gather(a.get("/healthz"), a.get("/healthz"))
    text_b = await (await b.get("/metrics")).text()
    assert 'route="/healthz",status="200"} 2.0' not in text_b


async def test_root_answers_the_reachability_probe(client):
    head = await client.head("/")
    assert head.status == 200
    got = await client.get("/")
    assert got.status == 200 and (await got.json())["name"] == "helexa"
