"""Bad bytes never make a 500: broken encodings, deep JSON, invalid UTF-8, non-UTF-8 credentials, huge ids."""

from __future__ import annotations

import asyncio
import socket

import pytest

from helexa.gateway.app import make_gateway_app
from helexa.neuron.app import make_neuron_app
from tests.conftest import make_config
from tests.fakes.fake_harness import FakeHarness

DEEP = b'{"model":"m","messages":' + b"[" * 20000 + b"]" * 20000 + b"}"
CASES = {
    "deep": (DEEP, {}),
    "invalid utf-8": (b'{"model":"m\xff\xfe","messages":[],"model_id":"a\xff"}', {}),
    "stream_options": (b'{"model":"m","stream":true,"stream_options":"abc","messages":[]}', {}),
    "not gzip": (b"not gzip at all", {"Content-Encoding": "gzip"}),
    "nul": (b'{"model":"m\\u0000","model_id":"a\\u0000b","source":"x\\u0000y","messages":[]}', {}),
    "huge model": (b'{"model":"' + b"m" * 2_000_000 + b'","model_id":"' + b"m" * 2_000_000 + b'"}', {}),
}


@pytest.fixture
async def daemons(aiohttp_client, version, tmp_path):
    neuron = await aiohttp_client(
        make_neuron_app(make_config(neuron={"model_dirs": [str(tmp_path)]}, models=[]), version, {"fake": FakeHarness})
    )
    gateway_cfg = make_config(
        neurons=[{"name": "n", "endpoint": str(neuron.make_url("")).rstrip("/")}], auth={"api_keys": ["sk-good"]}
    )
    gateway = await aiohttp_client(make_gateway_app(gateway_cfg, version))
    return gateway, neuron


GATEWAY_PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/v1/responses"]
NEURON_PATHS = ["/v1/chat/completions", "/models/load", "/models/unload", "/tokenize"]


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_bodies_get_a_400_class_answer_in_the_right_envelope(daemons, case):
    gateway, neuron = daemons
    body, headers = CASES[case]
    headers = {"Content-Type": "application/json", "Connection": "close", **headers}
    for client, paths, auth in ((gateway, GATEWAY_PATHS, "sk-good"), (neuron, NEURON_PATHS, "")):
        for path in paths:
            resp = await client.post(path, data=body, headers={**headers, "Authorization": f"Bearer {auth}"})
            text = await resp.text()
            assert 400 <= resp.status < 500, (path, resp.status, text[:300])
            assert resp.content_type == "application/json", (path, text[:200])
            assert len(text) < 5000, (path, "the error echoed the whole input")
            envelope = await resp.json()
            assert (
                ("type" in envelope and envelope["type"] == "error")
                if path.startswith("/v1/messages")
                else ("error" in envelope)
            )
    # both daemons serve on
    assert (await gateway.get("/healthz")).status == 200 and (await neuron.get("/healthz")).status == 200


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe\xfd", b"x-api-key: \xff\x80"])
async def test_non_utf8_credentials_are_a_401(daemons, header):
    gateway, _ = daemons
    port = gateway.server.port
    body = b'{"model":"m","messages":[]}'
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + header
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
    answer = await asyncio.to_thread(raw_request, port, head)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"authentication_error"' in answer


RAW = {
    "garbage request line": b"HELLO WORLD\r\n\r\n",
    "header too large": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "bad chunk size": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "length and chunked": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "deflate that is not": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Encoding: deflate\r\nContent-Length: 9\r\n\r\nnot zlib!",
}


@pytest.mark.parametrize("case", list(RAW))
async def test_http_level_errors_are_json_and_the_daemon_serves_on(daemons, case):
    gateway, neuron = daemons
    for client in (gateway, neuron):
        answer = await asyncio.to_thread(raw_request, client.server.port, RAW[case])
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert 400 <= status < 500, head[:100]
        assert b"application/json" in head.lower(), head
        assert b'"error"' in body
        assert (await client.get("/healthz")).status == 200
