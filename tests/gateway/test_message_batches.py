"""Anthropic's Message Batches API through the gateway, with the official ``anthropic`` SDK (fake neurons: what the
engine answers is known, slow lines can be scripted): the round trip, errored / canceled / expired results,
delete, ownership, the two batch APIs kept apart, the operator's view, and what bad input gets."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time

import anthropic
import openai
import pytest
from click.testing import CliRunner

from helexa.cli.commands import cli
from helexa.gateway.batch_routes import batch_store_key
from helexa.gateway.batch_runner import LineCall, execute
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry
from tests.gateway.test_batches import KEY, KEYS, OPS, OTHER, chat_fleet, sdk

MODEL = "chat"


def sdk_anthropic(client, key: str = KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(client.make_url("")).rstrip("/"), api_key=key, max_retries=0)


def requests(n: int, *, model: str = MODEL, start: int = 0, **params) -> list[dict]:
    return [
        {
            "custom_id": f"req-{i}",
            "params": {
                "model": model,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"question {i}"}],
                **params,
            },
        }
        for i in range(start, start + n)
    ]


async def until_ended(api: anthropic.AsyncAnthropic, batch_id: str, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        batch = await api.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.processing_status}: {batch}"
        await asyncio.sleep(0.05)


async def results_of(api: anthropic.AsyncAnthropic, batch_id: str) -> dict:
    return {r.custom_id: r.result async for r in await api.messages.batches.results(batch_id)}


async def answered(neuron, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while len(neuron.served) < n:
        assert time.monotonic() < deadline, f"fewer than {n} requests reached the engine"
        await asyncio.sleep(0.02)


async def test_the_sdk_round_trip(fleet):
    client, neuron = await chat_fleet(fleet)
    api = sdk_anthropic(client)
    batch = await api.messages.batches.create(requests=requests(5))
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing == 5 and (batch.expires_at - batch.created_at).total_seconds() == 86400
    done = await until_ended(api, batch.id)
    counts = done.request_counts
    assert (counts.processing, counts.succeeded, counts.errored, counts.canceled, counts.expired) == (0, 5, 0, 0, 0)
    assert done.ended_at >= done.created_at and done.results_url.endswith(f"/v1/messages/batches/{batch.id}/results")
    results = await results_of(api, batch.id)
    assert sorted(results) == [f"req-{i}" for i in range(5)]
    for result in results.values():
        assert result.type == "succeeded" and result.message.type == "message"
        assert result.message.content[0].text == neuron.reply and result.message.model == MODEL
        assert result.message.usage.output_tokens == len(neuron.reply.split())
    assert neuron.served == [MODEL] * 5
    assert [b.id async for b in api.messages.batches.list()] == [batch.id]
    # the OpenAI batch API does not see it, nor this one an OpenAI batch
    assert (await sdk(client).batches.list()).data == []
    with pytest.raises(openai.NotFoundError):
        await sdk(client).batches.retrieve(batch.id)
    # the usage is counted like an OpenAI batch's (the operator's view)
    resp = await client.get("/admin/batches", headers={"Authorization": f"Bearer {OPS}"})
    listed = (await resp.json())["data"]
    assert [(b["id"], b["endpoint"], b["usage"]["output_tokens"]) for b in listed] == [
        (batch.id, "/v1/messages", 5 * len(neuron.reply.split()))
    ]
    deleted = await api.messages.batches.delete(batch.id)
    assert deleted.id == batch.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        await api.messages.batches.retrieve(batch.id)
    assert [b.id async for b in api.messages.batches.list()] == []
    files_dir = client.app[batch_store_key].files_dir
    assert list(files_dir.iterdir()) == []  # its results went with it


async def test_a_batch_of_several_models(fleet):
    """As Anthropic allows: each request runs on its own model — one loaded, one loaded for the batch (a cold
    load at batch priority) — and every result names its model."""
    a = FakeNeuron("a")
    a.preload(MODEL)
    client, _ = await fleet([a], models=[entry(MODEL, 600), entry("other", 600)], auth=KEYS)
    api = sdk_anthropic(client)
    mixed = [*requests(3), *requests(3, model="other", start=3)]
    mixed[1], mixed[4] = mixed[4], mixed[1]  # interleaved
    batch = await api.messages.batches.create(requests=mixed)
    done = await until_ended(api, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (6, 0)
    results = await results_of(api, batch.id)
    want = {r["custom_id"]: r["params"]["model"] for r in mixed}
    assert {custom_id: result.message.model for custom_id, result in results.items()} == want
    assert sorted(a.served) == sorted(want.values()) and a.loads == ["other"]
    resp = await client.get("/admin/batches", headers={"Authorization": f"Bearer {OPS}"})
    assert (await resp.json())["data"][0]["model"] == "chat,other"


async def test_a_request_that_fails_is_errored_in_anthropics_envelope(fleet):
    client, _ = await chat_fleet(fleet)
    api = sdk_anthropic(client)
    bad = {"custom_id": "bad", "params": {"model": MODEL, "max_tokens": 10, "messages": 3}}
    batch = await api.messages.batches.create(requests=[*requests(2), bad])
    done = await until_ended(api, batch.id)
    assert (done.request_counts.succeeded, done.request_counts.errored) == (2, 1)
    results = await results_of(api, batch.id)
    failed = results["bad"]
    assert failed.type == "errored" and failed.error.type == "error"
    assert failed.error.error.type == "invalid_request_error" and "messages" in failed.error.error.message
    assert results["req-0"].type == results["req-1"].type == "succeeded"


async def test_cancel_ends_it_with_the_rest_canceled(fleet):
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.3
    api = sdk_anthropic(client)
    batch = await api.messages.batches.create(requests=requests(20))
    await answered(neuron, 2)
    with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
        await api.messages.batches.delete(batch.id)
    # (the SDK asks for results only once results_url is set; a client that asks before is told why)
    resp = await client.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": KEY})
    assert resp.status == 400 and "has not ended" in (await resp.json())["error"]["message"]
    canceling = await api.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling" and canceling.cancel_initiated_at is not None
    done = await until_ended(api, batch.id)
    counts = done.request_counts
    ran = counts.succeeded
    assert 2 <= ran < 20 and counts.canceled == 20 - ran and counts.errored == 0
    results = await results_of(api, batch.id)
    assert len(results) == 20 and sum(r.type == "canceled" for r in results.values()) == 20 - ran
    assert len(neuron.served) == ran
    with pytest.raises(anthropic.APIStatusError) as refused:
        await api.messages.batches.cancel(batch.id)
    assert refused.value.status_code == 409 and "only a batch in progress" in refused.value.message


async def test_an_expired_batch_reports_expired_requests(fleet):
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.2
    api = sdk_anthropic(client)
    batch = await api.messages.batches.create(requests=requests(30))
    await answered(neuron, 1)
    database = client.app[batch_store_key].directory / "batches.sqlite"
    with sqlite3.connect(database) as db:  # the day is over
        db.execute("UPDATE batches SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, batch.id))
    done = await until_ended(api, batch.id)
    assert done.request_counts.expired == 30 - done.request_counts.succeeded > 0
    results = await results_of(api, batch.id)
    assert sum(r.type == "expired" for r in results.values()) == done.request_counts.expired


async def test_message_batches_belong_to_their_key(fleet):
    client, _ = await chat_fleet(fleet)
    alice, bob = sdk_anthropic(client), sdk_anthropic(client, OTHER)
    batch = await alice.messages.batches.create(requests=requests(1))
    await until_ended(alice, batch.id)
    for call in (
        bob.messages.batches.retrieve(batch.id),
        bob.messages.batches.cancel(batch.id),
        bob.messages.batches.results(batch.id),
        bob.messages.batches.delete(batch.id),
    ):
        with pytest.raises(anthropic.NotFoundError):
            await call
    assert [b async for b in bob.messages.batches.list()] == []
    # the operator's CLI lists and could cancel it, whichever API made it
    base = str(client.make_url("")).rstrip("/")
    listed = await asyncio.to_thread(
        CliRunner().invoke, cli, ["batches", "list", "--url", base, "--api-key", OPS], catch_exceptions=False
    )
    assert batch.id in listed.output and "/v1/messages" in listed.output


async def test_pages_of_message_batches(fleet):
    client, _ = await chat_fleet(fleet)
    api = sdk_anthropic(client)
    made = [(await api.messages.batches.create(requests=requests(1))).id for _ in range(5)]
    first = await api.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more and first.last_id == made[3]
    assert [b.id async for b in api.messages.batches.list(limit=2)] == made[::-1]  # the SDK pages with after_id
    newer = await api.messages.batches.list(limit=2, before_id=made[1])
    assert [b.id for b in newer.data] == [made[3], made[2]] and newer.has_more and newer.first_id == made[3]
    # and backwards through every page from the oldest (the SDK pages on with before_id = first_id)
    assert [b.id async for b in api.messages.batches.list(limit=2, before_id=made[0])] == [
        made[2],
        made[1],
        made[4],
        made[3],
    ]
    with pytest.raises(anthropic.BadRequestError, match="not both"):
        await api.messages.batches.list(after_id=made[1], before_id=made[2])


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"requests": []}, 400, "requests"),
        ({"requests": "all"}, 400, "requests"),
        ({}, 400, "requests"),
        ({"requests": [{"custom_id": "a b", "params": {"model": MODEL}}]}, 400, "requests.0.custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": {"model": MODEL}}]}, 400, "requests.0.custom_id"),
        ({"requests": requests(1) + requests(1)}, 400, "requests.1.custom_id: 'req-0' is used twice"),
        (
            {"requests": requests(1) + requests(1, model="other", start=1)},
            400,
            "requests.1.params.model: model 'other'",
        ),
        ({"requests": requests(1, model="a,b")}, 400, "requests.0.params.model: 'a,b' is not a model id"),
        ({"requests": requests(1, stream=True)}, 400, "requests.0.params.stream"),
        ({"requests": [{"custom_id": "a", "params": []}]}, 400, "requests.0.params"),
        ({"requests": [{"custom_id": "a", "params": {"max_tokens": 5}}]}, 400, "requests.0.params"),
        ({"requests": requests(1, model="nowhere")}, 400, "requests.0.params.model: model 'nowhere' is not in"),
        (
            {"requests": requests(1) + requests(1, model="embedder", start=1)},
            400,
            "1.params.model: model 'embedder' is",
        ),
        ({"requests": requests(4)}, 400, "max_lines"),
    ],
)
async def test_a_bad_create_is_refused_naming_the_request(fleet, body, status, says):
    client, _ = await chat_fleet_with_embedder(fleet)
    resp = await client.post("/v1/messages/batches", json=body, headers={"x-api-key": KEY})
    answer = await resp.json()
    assert resp.status == status and answer["type"] == "error", answer
    assert answer["error"]["type"] == "invalid_request_error" and says in answer["error"]["message"], answer
    assert await client.app[batch_store_key].list_batches(None, "", 10) == ([], False)  # nothing kept


async def chat_fleet_with_embedder(fleet):
    a = FakeNeuron("a")
    a.preload(MODEL)
    a.preload("embedder")
    models = [entry(MODEL, 600), entry("embedder", 600, task="embed")]
    return await fleet([a], models=models, auth=KEYS, batches={"max_lines": 3, "max_file_mb": 1})


async def test_bad_requests_get_clear_errors(fleet):
    client, fakes = await chat_fleet_with_embedder(fleet)
    auth = {"x-api-key": KEY}
    too_big = {"requests": requests(1, system="x" * (1024 * 1024))}
    resp = await client.post("/v1/messages/batches", json=too_big, headers=auth)
    answer = await resp.json()
    assert resp.status == 413 and answer["error"]["type"] == "request_too_large", answer
    resp = await client.post(
        "/v1/messages/batches", data=b"{nope", headers={**auth, "Content-Type": "application/json"}
    )
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"
    for path, want in (
        ("/v1/messages/batches/msgbatch_0123456789abcdef01234567", 404),
        ("/v1/messages/batches/..%2F..%2Fetc%2Fpasswd", 404),
        ("/v1/messages/batches/batch_nope/results", 404),
        ("/v1/messages/batches?limit=0", 400),
        ("/v1/messages/batches?limit=1001", 400),
        ("/v1/messages/batches?after_id=%00", 400),
        ("/v1/messages/batches?before_id=batch_x", 400),
    ):
        resp = await client.get(path, headers=auth)
        answer = await resp.json()
        assert resp.status == want and answer["type"] == "error" and answer["error"]["message"], (path, answer)
    # a web page cannot create one (not JSON, or a foreign origin)
    resp = await client.post(
        "/v1/messages/batches",
        data=b'{"requests": []}',
        headers={**auth, "Content-Type": "text/plain", "Origin": "https://evil.example"},
    )
    assert resp.status in (403, 415), await resp.text()
    # an OpenAI batch is not one of these
    upload = await sdk(client).files.create(
        file=("in.jsonl", b'{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"chat"}}\n'),
        purpose="batch",
    )
    openai_batch = await sdk(client).batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    resp = await client.get(f"/v1/messages/batches/{openai_batch.id}", headers=auth)
    assert resp.status == 404
    # the gateway still serves
    answer = await sdk_anthropic(client).messages.create(
        model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.content[0].text == fakes["a"].reply


@pytest.mark.parametrize("endpoint", ["/v1/messages", "/v1/chat/completions", "/v1/responses"])
async def test_a_line_that_breaks_a_decoder_is_a_400_answer(fleet, endpoint):
    """A stored line is decoded again when it runs: JSON nested too deeply, or not UTF-8, is its 400 answer in
    its API's envelope (never a task's error that would run it again and again)."""
    client, neuron = await chat_fleet(fleet)
    for body in (b'{"model": "chat", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b'{"model": "\xff"}'):
        status, answer, usage = await execute(LineCall(client.app, "r", None, None), endpoint, body)
        error = json.loads(answer)
        assert status == 400 and usage is None, answer
        message = error["error"]["message"]
        assert "nested too deeply" in message or "UTF-8" in message or "JSON" in message, message
        if endpoint == "/v1/messages":
            assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert neuron.served == []
