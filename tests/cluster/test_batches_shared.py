"""Batches on a cluster: kept in the store, so a file uploaded through one gateway, its batch created through a
second and read through the third is one batch; the leader runs it; the leader gone in the middle, the new one
finishes it with each line in the output once; the store gone, the API says so (503) and nothing is lost. The
official ``openai`` SDK against in-process gateways on a real Redis, in front of a fake neuron."""

from __future__ import annotations

import asyncio
import json
import time

import anthropic
import openai
import pytest

from helexa.gateway import batch_runner
from helexa.gateway.batch_routes import batch_store_key
from helexa.gateway.state import peers_key
from tests.cluster.test_gateways import leader_of
from tests.conftest import metric_total, until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

KEYS = {"keys": [{"name": "alice", "key": "sk-alice"}, {"name": "bob", "key": "sk-bob"}]}


def sdk(client, key: str = "sk-alice") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


def batch_file(n: int) -> bytes:
    rows = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat", "messages": [{"role": "user", "content": f"question {i}"}]},
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def until_batch(api: openai.AsyncOpenAI, batch_id: str, done, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        batch = await api.batches.retrieve(batch_id)
        if done(batch):
            return batch
        assert time.monotonic() < deadline, batch
        await asyncio.sleep(0.05)


def lines_run(client) -> float:
    return metric_total(client.app, "helexa_gateway_batch_lines_total", 'result="completed"')


@pytest.fixture
async def chat_cluster(cluster):
    neuron = FakeNeuron("a")
    neuron.preload("chat")
    clients, _ = await cluster([neuron], models=[entry("chat", 600)], auth=KEYS)
    return clients, neuron


async def test_one_batch_through_three_gateways(chat_cluster):
    clients, neuron = chat_cluster
    upload = await sdk(clients[0]).files.create(file=("in.jsonl", batch_file(6)), purpose="batch")
    batch = await sdk(clients[1]).batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = await until_batch(sdk(clients[2]), batch.id, lambda b: b.status == "completed")
    assert (done.request_counts.completed, done.request_counts.failed, done.request_counts.total) == (6, 0, 6)
    for client in clients:  # every gateway serves the same files and batches
        api = sdk(client)
        output = (await api.files.content(done.output_file_id)).read().splitlines()
        assert [json.loads(o)["custom_id"] for o in output] == [f"q{i}" for i in range(6)]
        assert [b.id for b in (await api.batches.list()).data] == [batch.id]
        assert {f.id for f in (await api.files.list()).data} == {upload.id, done.output_file_id}
        assert (await sdk(client, "sk-bob").batches.list()).data == []  # still the key's own
    assert len(neuron.served) == 6
    leader = leader_of(clients)
    assert lines_run(leader) == 6 and all(lines_run(c) == 0 for c in clients if c is not leader)  # one runner


async def test_the_leader_gone_mid_batch_the_next_one_finishes_it(chat_cluster):
    clients, neuron = chat_cluster
    neuron.slow_marker, neuron.slow_seconds = "question", 0.1
    leader = leader_of(clients)
    others = [c for c in clients if c is not leader]
    api = sdk(others[0])
    upload = await api.files.create(file=("in.jsonl", batch_file(24)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until_batch(api, batch.id, lambda b: b.request_counts.completed >= 3)
    await leader.close()  # a line in flight is not stored; the lease expires
    await until(lambda: any(c.app[peers_key].leading for c in others), 10, "a new leader")
    done = await until_batch(api, batch.id, lambda b: b.status == "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (24, 0)
    output = [json.loads(o) for o in (await api.files.content(done.output_file_id)).read().splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"q{i}" for i in range(24))  # each exactly once


async def test_cancel_through_another_gateway_and_bad_input(chat_cluster):
    clients, neuron = chat_cluster
    neuron.slow_marker, neuron.slow_seconds = "question", 0.2
    upload = await sdk(clients[0]).files.create(file=("in.jsonl", batch_file(30)), purpose="batch")
    batch = await sdk(clients[0]).batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await until_batch(sdk(clients[1]), batch.id, lambda b: b.request_counts.completed >= 1)
    assert (await sdk(clients[2]).batches.cancel(batch.id)).status == "cancelling"
    done = await until_batch(sdk(clients[1]), batch.id, lambda b: b.status == "cancelled")
    assert 1 <= done.request_counts.completed < 30
    with pytest.raises(openai.ConflictError):
        await sdk(clients[1]).batches.cancel(batch.id)
    with pytest.raises(openai.NotFoundError):
        await sdk(clients[2], "sk-bob").files.content(upload.id)
    bad = await sdk(clients[1]).files.create(file=("bad.jsonl", b"{nope\n"), purpose="batch")
    failed = await sdk(clients[2]).batches.create(
        input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert failed.status == "failed" and failed.errors.data[0].code == "invalid_json_line"
    assert (await sdk(clients[0]).files.delete(bad.id)).deleted
    with pytest.raises(openai.NotFoundError):
        await sdk(clients[1]).files.retrieve(bad.id)


async def test_the_store_gone_the_api_says_so_and_loses_nothing(chat_cluster, redis_server):
    clients, _ = chat_cluster
    api = sdk(clients[1])
    upload = await api.files.create(file=("in.jsonl", batch_file(3)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until_batch(api, batch.id, lambda b: b.status == "completed")
    redis_server.stop()
    with pytest.raises(openai.InternalServerError) as refused:
        await api.batches.retrieve(batch.id)
    assert refused.value.status_code == 503 and refused.value.body["code"] == "store_unavailable"
    with pytest.raises(openai.InternalServerError):
        await api.files.create(file=("in.jsonl", batch_file(1)), purpose="batch")
    assert not list(clients[1].app[batch_store_key].spool_dir.glob("*"))  # the refused upload left nothing
    redis_server.start()  # it keeps its data on disk (append-only file), as a production store should
    await until(lambda: all(c.app[peers_key].up for c in clients), 10, "the store back")
    again = await sdk(clients[2]).batches.retrieve(batch.id)
    assert again.status == "completed" and again.request_counts.completed == 3
    output = (await sdk(clients[0]).files.content(again.output_file_id)).read().splitlines()
    assert len(output) == 3


async def test_a_message_batch_through_the_cluster(chat_cluster):
    """Anthropic's batches share the store too: created through one gateway, cancelled through a second, its
    results read and the batch deleted through the third; the OpenAI listing never shows it."""
    clients, neuron = chat_cluster
    neuron.slow_marker, neuron.slow_seconds = "question", 0.2
    apis = [
        anthropic.AsyncAnthropic(base_url=str(c.make_url("")).rstrip("/"), api_key="sk-alice", max_retries=0)
        for c in clients
    ]
    params = {"model": "chat", "max_tokens": 16}
    requests = [
        {"custom_id": f"q{i}", "params": {**params, "messages": [{"role": "user", "content": f"question {i}"}]}}
        for i in range(12)
    ]
    batch = await apis[0].messages.batches.create(requests=requests)
    await until(lambda: len(neuron.served) >= 2, 20, "two requests of the batch ran")
    await apis[1].messages.batches.cancel(batch.id)
    deadline = time.monotonic() + 20
    while (done := await apis[2].messages.batches.retrieve(batch.id)).processing_status != "ended":
        assert time.monotonic() < deadline, done
        await asyncio.sleep(0.05)
    counts = done.request_counts
    assert counts.succeeded >= 2 and counts.succeeded + counts.canceled == 12 and counts.errored == 0
    results = {r.custom_id: r.result async for r in await apis[2].messages.batches.results(batch.id)}
    assert len(results) == 12 and sum(r.type == "succeeded" for r in results.values()) == counts.succeeded
    assert all(r.message.content[0].text == neuron.reply for r in results.values() if r.type == "succeeded")
    assert (await sdk(clients[0]).batches.list()).data == []
    assert [b.id async for b in apis[1].messages.batches.list()] == [batch.id]
    await apis[2].messages.batches.delete(batch.id)
    for api in apis:
        assert [b.id async for b in api.messages.batches.list()] == []
        with pytest.raises(anthropic.NotFoundError):
            await api.messages.batches.retrieve(batch.id)
    store = clients[0].app[batch_store_key]
    assert not await store.redis.keys(store._key("*", batch.id)), "the deleted batch left keys in the store"


async def test_expired_files_leave_the_store(chat_cluster, monkeypatch):
    monkeypatch.setattr(batch_runner, "SWEEP_S", 0.05)
    clients, _ = chat_cluster
    api = sdk(clients[0])
    upload = await api.files.create(
        file=("in.jsonl", batch_file(1)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    kept = await api.files.create(file=("in.jsonl", batch_file(1)), purpose="batch")
    assert upload.expires_at == upload.created_at + 3600 and kept.expires_at == kept.created_at + 30 * 86400
    store = clients[0].app[batch_store_key]
    past = int(time.time()) - 1
    await store.redis.hset(store._key("file", upload.id), "expires_at", past)
    await store.redis.zadd(store._key("files-expiring"), {upload.id: past})
    for client in clients:
        with pytest.raises(openai.NotFoundError):
            await sdk(client).files.retrieve(upload.id)

    async def swept() -> bool:
        return not await store.redis.exists(store._key("file", upload.id), store._key("filedata", upload.id))

    deadline = time.monotonic() + 10
    while not await swept():
        assert time.monotonic() < deadline, "the leader never deleted the expired file"
        await asyncio.sleep(0.05)
    assert [f.id for f in (await sdk(clients[2]).files.list()).data] == [kept.id]
    assert await store.redis.zscore(store._key("files-expiring"), kept.id) == kept.expires_at


async def test_a_large_output_is_written_in_pieces(chat_cluster):
    """More lines than are read at once and more output than one piece: the file is whole and in order."""
    clients, neuron = chat_cluster
    neuron.reply = "word " * 120  # about 900 bytes an output line: 600 lines make two pieces and more
    api = sdk(clients[0])
    upload = await api.files.create(file=("in.jsonl", batch_file(600)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await until_batch(sdk(clients[1]), batch.id, lambda b: b.status == "completed", timeout=120)
    data = (await sdk(clients[2]).files.content(done.output_file_id)).read()
    output = [json.loads(line) for line in data.splitlines()]
    assert [o["custom_id"] for o in output] == [f"q{i}" for i in range(600)]
    store = clients[0].app[batch_store_key]
    pieces = await store.redis.llen(store._key("filedata", done.output_file_id))
    assert len(data) > 2 * 256 * 1024 and pieces == -(-len(data) // (256 * 1024))
    assert (await sdk(clients[2]).files.retrieve(done.output_file_id)).bytes == len(data)
    assert not await store.redis.exists(store._key("filedata-part", done.output_file_id))
