"""Keys with scopes and limits: inference vs admin, hashed keys, 429 with Retry-After, metrics by key name."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json

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
        {"name": "budget", "key": "sk-b", "tokens_per_hour": 30},
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
    # each reserves ~15 (63 bytes of prompt, no max_tokens) and uses 12 (the fake's usage): two fit in 30
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))).status == 200
    over = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))
    message = (await over.json())["error"]["message"]
    assert over.status == 429 and "has 6 of its 30 tokens left this hour" in message, message


async def tokens_counted(client, key: str) -> float:
    return metric(generate_latest(client.app[registry_key]).decode(), "helexa_gateway_key_tokens_total", key=key)


async def test_a_stream_the_client_cuts_still_counts_against_tokens_per_hour(fleet):
    """The report's bypass: streams cut before their usage event were never counted, so the limit never hit."""
    a = FakeNeuron("a", chunk_delay=0.2, reply="one two three four five six seven eight nine ten")
    a.preload("m")
    client, _ = await fleet([a], auth={"keys": [{"name": "budget", "key": "sk-b", "tokens_per_hour": 100}]})
    for dialect, path, body in (
        ("openai", "/v1/chat/completions", {**CHAT, "stream": True}),
        ("anthropic", "/v1/messages", {**CHAT, "max_tokens": 8, "stream": True}),
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
    cut = await tokens_counted(client, "budget")
    assert cut >= 6
    for _ in range(10):  # whole answers until the hour's tokens, the cut streams' included, run out
        over = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("sk-b"))
        if over.status == 429:
            break
    message = (await over.json())["error"]["message"]
    assert over.status == 429 and "of its 100 tokens left this hour" in message, message
    assert await tokens_counted(client, "budget") <= 100  # reserved before sent: never past the limit


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


async def test_tokens_per_hour_holds_for_requests_at_once(fleet):
    """The report: ten concurrent 1000-token requests on a small budget all passed (the limit was checked only
    at admission). Each now reserves its prompt and max_tokens first: two fit in 3000, eight get 429."""
    a = FakeNeuron("a", slow_marker="hold", slow_seconds=0.5)
    a.preload("m")
    client, _ = await fleet([a], auth={"keys": [{"name": "budget", "key": "sk-b", "tokens_per_hour": 3000}]})
    body = {"model": "m", "max_tokens": 1000, "messages": [{"role": "user", "content": "hold on"}]}
    answers = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body, headers=bearer("sk-b")) for _ in range(10))
    )
    statuses = sorted(r.status for r in answers)
    assert statuses == [200] * 2 + [429] * 8, statuses
    refused = next(r for r in answers if r.status == 429)
    message = (await refused.json())["error"]["message"]
    assert "reserved by requests in flight" in message and "lower max_tokens" in message, message
    assert len(a.served) == 2
    exported = generate_latest(client.app[registry_key]).decode()
    assert metric(exported, "helexa_gateway_key_rejections_total", key="budget", reason="tokens_per_hour") == 8
    assert await tokens_counted(client, "budget") == 2 * 12  # settled at what they used (the fake's usage)
    # settled: the reservations are gone, the next one fits again
    assert (await client.post("/v1/chat/completions", json=body, headers=bearer("sk-b"))).status == 200


async def test_a_whole_answer_the_client_cuts_before_its_head_is_charged(fleet):
    """The report: a non-streamed answer's head comes after the whole generation, so hanging up before it cost
    nothing (6 requests reached the neuron, counter 0). A request that was sent is charged what it reserved."""
    a = FakeNeuron("a", slow_marker="ponder", slow_seconds=5)
    a.preload("m")
    client, _ = await fleet([a], auth={"keys": [{"name": "budget", "key": "sk-b", "tokens_per_hour": 100_000}]})
    body = {"model": "m", "max_tokens": 200, "messages": [{"role": "user", "content": "ponder"}]}
    estimate = len(json.dumps(body)) // 4 + 200
    for n in range(1, 4):
        task = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers=bearer("sk-b")))
        await until(lambda n=n: len(a.auth_seen) == n, 5, "the request reached the neuron")
        task.cancel()  # the client hangs up while the engine generates
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await until(lambda: _in_flight(client) == 0, 5, "the gateway saw the hang-up")
    counted = await tokens_counted(client, "budget")
    assert counted == 3 * estimate, (counted, estimate)


def _in_flight(client) -> int:
    from helexa.gateway.state import lifecycle_key

    return sum(sum(n.in_flight.values()) for n in client.app[lifecycle_key].registry.neurons.values())
