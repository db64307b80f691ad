"""Keys with scopes and limits: inference vs admin, hashed keys, 429 with Retry-After, metrics by key name."""

from __future__ import annotations

import asyncio
import hashlib

from prometheus_client import generate_latest

from helexa.gateway.state import ui_app_key
from helexa.gateway.ui import keyring_key as ui_keyring_key
from helexa.server.app import registry_key
from tests.conftest import until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.test_gateway import metric

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def test_admin_routes_need_an_admin_key(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a], auth={"api_keys": ["sk-user"], "admin_keys": ["sk-admin"]})
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-user"))).status == 200
    resp = await client.post("/admin/models/m/unload", headers=bearer("sk-user"))
    assert resp.status == 403 and (await resp.json())["error"]["type"] == "permission_error"
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-admin"))).status == 403
    assert (await client.post("/admin/models/m/unload", headers=bearer("sk-admin"))).status == 200
    assert (await client.get("/fleet", headers=bearer("sk-admin"))).status == 200
    assert (await client.get("/fleet")).status == 401


async def test_with_auth_on_and_no_admin_key_admin_routes_are_closed(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a], auth={"api_keys": ["sk-user"]})
    resp = await client.post("/admin/models/m/unload", headers=bearer("sk-user"))
    assert resp.status == 403 and "admin_keys" in (await resp.json())["error"]["message"]
    assert a.unloads == []


async def test_a_key_stored_as_its_sha256_works_and_metrics_name_it_never_show_it(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    secret = "sk-very-secret-123"
    digest = hashlib.sha256(secret.encode()).hexdigest()
    client, _ = await fleet([a], auth={"keys": [{"name": "ci-bot", "sha256": digest}]})
    assert (await client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": secret})).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(secret + "x"))).status == 401
    exported = generate_latest(client.app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_key_requests_total", key="ci-bot") == 1
    assert metric(exported, "helexa_gateway_key_tokens_total", key="ci-bot") > 0
    assert secret not in exported and digest not in exported


async def test_requests_per_minute_is_a_429_with_retry_after(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a], auth={"keys": [{"name": "slow", "key": "sk-s", "requests_per_minute": 2}]})
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-s"))).status == 200
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-s"))
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 30
    error = (await resp.json())["error"]
    assert error["type"] == "rate_limit_error" and "2 requests a minute" in error["message"]
    resp = await client.post("/v1/messages", json={**CHAT, "max_tokens": 5}, headers=bearer("sk-s"))
    assert resp.status == 429 and (await resp.json())["error"]["type"] == "rate_limit_error"  # Anthropic's envelope
    exported = generate_latest(client.app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_key_rejections_total", key="slow", reason="requests_per_minute") == 2


async def test_max_concurrent_and_tokens_per_hour(fleet):
    a = FakeNeuron("a", chunk_delay=0.1)
    a.preload("m")
    keys = [
        {"name": "one-at-a-time", "key": "sk-1", "max_concurrent": 1},
        {"name": "budget", "key": "sk-b", "tokens_per_hour": 5},
    ]
    client, _ = await fleet([a], auth={"keys": keys})
    slow = asyncio.create_task(
        client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer("sk-1"))
    )
    await until(lambda: len(a.served) == 1, 5, "the slow request reached the neuron")
    second = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-1"))
    assert second.status == 429 and second.headers["Retry-After"] == "1"
    await (await slow).read()
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-1"))).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))).status == 200  # 7+ tokens
    over = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))
    assert over.status == 429 and "5 tokens this hour" in (await over.json())["error"]["message"]


async def tokens_counted(client, key: str) -> float:
    return metric(generate_latest(client.app[registry_key]).decode(), "helexa_gateway_key_tokens_total", key=key)


async def test_a_stream_the_client_cuts_still_counts_against_tokens_per_hour(fleet):
    """The report's bypass: streams cut before their usage event were never counted, so the limit never hit."""
    a = FakeNeuron("a", chunk_delay=0.2, reply="one two three four five six seven eight nine ten")
    a.preload("m")
    client, _ = await fleet([a], auth={"keys": [{"name": "budget", "key": "sk-b", "tokens_per_hour": 40}]})
    for dialect, path, body in (
        ("openai", "/v1/chat/completions", {**CHAT, "stream": True}),
        ("anthropic", "/v1/messages", {**CHAT, "max_tokens": 50, "stream": True}),
        ("openai", "/v1/chat/completions", {**CHAT, "stream": True}),
    ):
        before = await tokens_counted(client, "budget")
        resp = await client.post(path, json=body, headers=bearer("sk-b"))
        assert resp.status == 200, (dialect, await resp.text())
        await resp.content.readuntil(b"delta")  # the first token arrived: hang up now
        resp.close()
        deadline = asyncio.get_running_loop().time() + 5
        while await tokens_counted(client, "budget") == before:  # the gateway notices the hang-up, then counts
            assert asyncio.get_running_loop().time() < deadline, f"a cut {dialect} stream was never counted"
            await asyncio.sleep(0.02)
        assert await tokens_counted(client, "budget") - before >= 2  # the prompt's bytes and the streamed events
        if await tokens_counted(client, "budget") >= 40:
            break
    over = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))
    assert over.status == 429 and "40 tokens this hour" in (await over.json())["error"]["message"]


async def test_wrong_keys_are_throttled_per_address(fleet):
    """The report: 200 wrong keys in 2.3 s, all 401. Now ten, then 429 for everything from that address — a right
    key included, so a guess cannot be told apart — until the bucket refills."""
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a], auth={"api_keys": ["sk-right"]})
    throttle = client.app[ui_app_key][ui_keyring_key].throttle
    now = [1000.0]
    throttle.clock = lambda: now[0]
    statuses = [(await client.get("/v1/models", headers=bearer(f"sk-guess-{i}"))).status for i in range(200)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    right = await client.get("/v1/models", headers=bearer("sk-right"))
    body = await right.json()
    assert right.status == 429 and body["error"]["code"] == "too_many_failed_attempts"
    assert int(right.headers["Retry-After"]) >= 1 and "wait" in body["error"]["message"]
    login = await client.post("/ui/login", data={"key": "sk-right"}, allow_redirects=False)
    assert login.status == 429 and "too many wrong keys" in await login.text()
    now[0] += 6  # one failure's worth refilled
    assert (await client.get("/v1/models", headers=bearer("sk-right"))).status == 200
    assert (await client.get("/v1/models", headers=bearer("sk-guess"))).status == 401
    assert (await client.get("/v1/models", headers=bearer("sk-right"))).status == 429
    now[0] += 3600
    assert (await client.get("/v1/models", headers=bearer("sk-right"))).status == 200
    assert throttle._buckets == {}  # a refilled address is forgotten
