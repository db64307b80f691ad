"""Three gateways and two neurons as real processes, on one real Redis, serving the real demo models on llama.cpp.

What an operator running three gateways expects: a burst through all three loads each model once; a key limited to
N requests a minute gets N across the three; the leader SIGKILLed in the middle of cold loads — every request
sent to the other gateways is served, no model is loaded twice, a new leader within 5 s; the store stopped —
loaded models keep answering, a cold load is a 503 at once; the store back — cold loads again.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time

import aiohttp
import openai
import pytest

from tests.cluster.fleet import (
    ADMIN,
    CAPPED,
    GEMMA,
    OPEN,
    SMOL,
    ask,
    fleet_report,
    loads,
    start_gateway,
    start_neurons,
    until_agreed,
    until_everyone_sees,
    until_loading,
)

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def ha_fleet(tmp_path, helexa_process, redis_server, demo_models_dir, smollm2_gguf):
    """Two neurons and three gateways (``gw0``..``gw2``), each a ``helexa run`` process; returns
    ``(gateways: name -> (url, process), neurons: their references)`` once every gateway sees both neurons."""
    model_dirs = [demo_models_dir, smollm2_gguf.parent]
    neurons = start_neurons(helexa_process, tmp_path, model_dirs, smollm2_gguf.name, "127.0.0.1")
    gateways = {
        f"gw{i}": start_gateway(helexa_process, tmp_path, f"gw{i}", redis_server.url, neurons) for i in range(3)
    }
    until_agreed([url for url, _ in gateways.values()], helexa_process, [p for _, p in gateways.values()])
    return gateways, neurons


async def test_three_gateways_two_neurons_one_store(ha_fleet, helexa_process, redis_server):
    gateways, neurons = ha_fleet
    urls = {name: url for name, (url, _) in gateways.items()}
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        leader = (await fleet_report(session, urls["gw0"]))["cluster"]["leader"]
        followers = [n for n in urls if n != leader]

        # 1. a burst through all three gateways: each model is loaded once, every request served
        burst = [ask(session, url, model) for url in urls.values() for model in (SMOL, GEMMA) for _ in range(2)]
        assert await asyncio.gather(*burst) == [200] * 12
        assert (loads(neurons, SMOL), loads(neurons, GEMMA)) == (1, 1)

        # 2. a key limited to 4 requests a minute gets 4 across the three gateways
        statuses = [await ask(session, urls[f"gw{i % 3}"], SMOL, CAPPED) for i in range(9)]
        assert sorted(statuses) == [200] * 4 + [429] * 5, statuses

        # 3. the leader SIGKILLed in the middle of cold loads
        for model in (SMOL, GEMMA):
            async with session.post(
                f"{urls[followers[0]]}/admin/models/{model}/unload", headers={"Authorization": f"Bearer {ADMIN}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
        before = {m: loads(neurons, m) for m in (SMOL, GEMMA)}
        on_followers = [asyncio.create_task(ask(session, urls[f], model)) for f in followers for model in (SMOL, GEMMA)]
        on_leader = [asyncio.create_task(ask(session, urls[leader], model)) for model in (SMOL, GEMMA)]
        await until_loading(session, neurons)  # a load reached a neuron: the leader placed it
        killed_at = time.monotonic()
        gateways[leader][1].send_signal(signal.SIGKILL)
        new_leader = ""
        while not new_leader:
            assert time.monotonic() - killed_at < 5, "no new leader within 5 s"
            report = (await fleet_report(session, urls[followers[0]]))["cluster"]
            if report["leader"] in followers:
                new_leader = report["leader"]
            else:
                await asyncio.sleep(0.1)
        assert await asyncio.gather(*on_followers) == [200] * 4  # nothing lost that was sent to a live gateway
        assert all(status in (0, 200) for status in await asyncio.gather(*on_leader))
        assert {m: loads(neurons, m) - before[m] for m in (SMOL, GEMMA)} == {SMOL: 1, GEMMA: 1}  # none twice

        # 4. the store stopped: loaded models keep answering, a cold load is a 503 at once
        async with session.post(
            f"{urls[new_leader]}/admin/models/{GEMMA}/unload", headers={"Authorization": f"Bearer {ADMIN}"}
        ) as resp:
            assert resp.status == 200
        await until_everyone_sees(session, [urls[f] for f in followers], GEMMA, "unloaded")
        redis_server.stop()
        began = time.monotonic()
        while any([(await fleet_report(session, urls[f]))["cluster"]["store_up"] for f in followers]):
            assert time.monotonic() - began < 10, "the gateways never noticed the store was gone"
            await asyncio.sleep(0.2)
        for f in followers:
            assert await ask(session, urls[f], SMOL) == 200
        body = {"model": GEMMA, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        async with session.post(
            f"{urls[followers[1]]}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {OPEN}"}
        ) as resp:
            error = (await resp.json())["error"]
            assert resp.status == 503 and error["code"] == "store_unavailable", error

        # 5. the store back: the gateways find it again by themselves, a leader places the cold load
        redis_server.start()
        deadline = time.monotonic() + 30
        while True:
            status = await ask(session, urls[followers[1]], GEMMA)
            if status == 200:
                break
            assert status == 503 and time.monotonic() < deadline, status
            await asyncio.sleep(0.5)
        assert loads(neurons, GEMMA) - before[GEMMA] == 2  # the one load after the store came back
    log = helexa_process.output(gateways[new_leader][1])
    assert re.search(r"leads the cluster now", log), log[-2000:]


async def test_a_batch_survives_its_leader(ha_fleet):
    """A batch uploaded through one gateway and created through another runs on the leader; the leader SIGKILLed
    in the middle, the next leader finishes it: every line in the output once, read through any gateway."""
    gateways, neurons = ha_fleet
    urls = {name: url for name, (url, _) in gateways.items()}
    async with aiohttp.ClientSession() as session:
        leader = (await fleet_report(session, urls["gw0"]))["cluster"]["leader"]
    followers = [n for n in urls if n != leader]
    rows = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": SMOL, "messages": [{"role": "user", "content": f"Count to {i}."}], "max_tokens": 12},
        }
        for i in range(16)
    ]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    first, second = (openai.AsyncOpenAI(base_url=f"{urls[f]}/v1", api_key=OPEN, max_retries=0) for f in followers)
    upload = await first.files.create(file=("in.jsonl", data), purpose="batch")
    batch = await second.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 240
    while (await first.batches.retrieve(batch.id)).request_counts.completed < 3:  # the model loads first
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    gateways[leader][1].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + 240
    while (done := await second.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline and done.status == "in_progress", done
        await asyncio.sleep(0.2)
    assert (done.request_counts.completed, done.request_counts.failed) == (16, 0)
    output = [json.loads(o) for o in (await first.files.content(done.output_file_id)).read().splitlines()]
    assert sorted(o["custom_id"] for o in output) == sorted(f"q{i}" for i in range(16))  # each exactly once
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in output)
    assert loads(neurons, SMOL) == 1  # the model was loaded once, for the whole batch
