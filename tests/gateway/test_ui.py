"""The fleet page: sign-in with a key (never shown), what it shows, and admin-only same-origin buttons."""

from __future__ import annotations

import asyncio
import json

import openai

from helexa.gateway.state import ui_app_key
from helexa.gateway.ui import rates_key as ui_rates_key
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry
from tests.gateway.test_batches import until_status

AUTH = {"api_keys": ["sk-user-secret"], "admin_keys": ["sk-admin-secret"]}


async def sign_in(client, key: str) -> None:
    resp = await client.post("/ui/login", data={"key": key}, allow_redirects=False)
    assert resp.status == 303, await resp.text()
    assert "HttpOnly" in resp.headers["Set-Cookie"] and "SameSite=Strict" in resp.headers["Set-Cookie"]
    assert key not in resp.headers["Set-Cookie"]  # a session id, not the key


async def test_the_page_needs_a_key_and_never_shows_it(fleet):
    a = FakeNeuron("gpu1", devices=[24000, 24000])
    a.preload("big", 20000)
    client, _ = await fleet([a], models=[entry("big"), entry("cold", vram_mb=1000)], auth=AUTH)
    first = await client.get("/ui")
    assert first.status == 401 and 'name="key"' in await first.text()
    wrong = await client.post("/ui/login", data={"key": "sk-nope"}, allow_redirects=False)
    assert wrong.status == 401
    await sign_in(client, "sk-user-secret")
    page = await (await client.get("/ui")).text()
    assert "gpu1" in page and "GPU 1 Fake GPU" in page and "big" in page and "cold" in page
    assert "sk-user-secret" not in page and "key-1" in page  # the key's name, not the key
    assert "/ui/models/big/unload" not in page  # an inference key gets no buttons
    refused = await client.post("/ui/models/cold/load", allow_redirects=False)
    assert refused.status == 403
    bearer = await client.get("/ui", headers={"Authorization": "Bearer sk-admin-secret"})
    assert bearer.status == 200 and "/ui/models/big/unload" in await bearer.text()


async def test_admin_buttons_load_and_unload(fleet):
    a = FakeNeuron("gpu1", devices=[24000])
    client, fakes = await fleet([a], models=[entry("cold", vram_mb=1000)], auth=AUTH)
    await sign_in(client, "sk-admin-secret")
    page = await (await client.get("/ui")).text()
    assert "/ui/models/cold/load" in page
    cross = await client.post("/ui/models/cold/load", headers={"Origin": "http://evil.example"}, allow_redirects=False)
    assert cross.status == 403
    done = await client.post("/ui/models/cold/load", allow_redirects=False)
    assert done.status == 303
    assert "loaded cold on gpu1" in await (await client.get(done.headers["Location"])).text()
    assert "cold" in fakes["gpu1"].models
    for _ in range(100):  # until a poll has seen it loaded
        page = await (await client.get("/ui")).text()
        if "/ui/models/cold/unload" in page:
            break
        await asyncio.sleep(0.05)
    assert "/ui/models/cold/unload" in page
    gone = await client.post("/ui/models/cold/unload", allow_redirects=False)
    assert gone.status == 303 and "cold" not in fakes["gpu1"].models
    out = await client.post("/ui/logout", allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/ui")).status == 401


async def test_without_auth_the_page_is_open_and_shows_live_figures(fleet):
    a = FakeNeuron("cpu1", devices=[])
    a.preload("m")
    client, _ = await fleet([a], models=[entry("m")])
    now = [1000.0]
    client.app[ui_app_key][ui_rates_key].clock = lambda: now[0]
    for _ in range(3):
        chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        await (await client.post("/v1/chat/completions", json=chat)).read()
    await client.get("/ui")
    now[0] += 1.1  # a rate needs two samples a second apart
    page = await (await client.get("/ui")).text()
    assert "CPU, " in page and "RAM" in page
    row = page.split('data-model="m"', 1)[1].split("</tr>", 1)[0]
    assert row.count("<td>-</td>") <= 1, row  # rate, TTFT and tokens/s filled in
    assert '<meta http-equiv="refresh"' in page and "<script" not in page


async def test_notes_come_from_the_server_not_the_url(fleet):
    client, _ = await fleet([FakeNeuron("a")], models=[entry("m", vram_mb=1000)])
    spoofed = await (await client.get("/ui?note=Your+session+expired%2C+enter+your+key+at+evil.example")).text()
    assert "evil.example" not in spoofed
    done = await client.post("/ui/models/m/load", allow_redirects=False)
    page = await (await client.get(done.headers["Location"])).text()
    assert "loaded m on a" in page


async def test_the_page_shows_bench_results_and_their_trend(fleet, tmp_path):
    from helexa.bench.store import Build, Result, Store

    store = Store(tmp_path / "bench.sqlite")
    for version, ttft in (("0.1.0", 0.30), ("0.2.0", 0.20)):
        run = store.start_run(Build(target="http://gw", helexa_version=version, git_sha="", engine="xllamacpp 1"))
        store.add(run, Result("m", "chat", 1, ok=True, requests=4, ttft_p50=ttft, latency_p50=1.0))
        store.add(run, Result("m", "chat", 4, ok=True, requests=4, ttft_p50=ttft, latency_p50=2.0))
    client, _ = await fleet([FakeNeuron("a")], models=[entry("m")], gateway={"bench_db": str(store.path)})
    page = await (await client.get("/ui")).text()
    bench = page.split("<h2>Bench</h2>", 1)[1]
    assert "<svg" in bench and "Time to first token across builds" in bench
    assert "0.2.0" in bench and "c=4" in bench  # the table, and the knee (latency doubled at c=4)


async def test_engine_log_routes_refuse_bad_input(fleet):
    a = FakeNeuron("gpu1")
    a.preload("m")
    client, _ = await fleet([a], models=[entry("m")], auth=AUTH)
    admin = {"Authorization": "Bearer sk-admin-secret"}
    bad = await client.get("/admin/models/m/logs?lines=many", headers=admin)
    body = await bad.json()
    assert bad.status == 400 and body["error"]["param"] == "lines" and "whole number" in body["error"]["message"]
    missing = await client.get("/admin/models/nope/logs", headers=admin)
    assert missing.status == 404 and (await missing.json())["error"]["code"] == "model_not_loaded"
    user = await client.get("/ui/models/m/logs?neuron=gpu1", headers={"Authorization": "Bearer sk-user-secret"})
    assert user.status == 403 and "admin scope" in (await user.json())["error"]["message"]
    nowhere = await client.get("/ui/models/m/logs?neuron=gpu9", headers=admin)
    assert nowhere.status == 404 and (await nowhere.json())["error"]["code"] == "neuron_not_found"


async def test_a_locked_bench_database_stalls_neither_the_page_nor_the_api(fleet, tmp_path):
    """The bug: /ui read the bench database on the event loop with a 30 s lock timeout; while ``helexa bench``
    held the write lock, /ui took 18 s and a /v1/models sent meanwhile 17.6 s."""
    import sys
    import time

    from helexa.bench.store import Build, Result, Store

    store = Store(tmp_path / "bench.sqlite")
    run = store.start_run(Build(target="http://gw", helexa_version="0.1.0", git_sha="", engine="e"))
    store.add(run, Result("m", "chat", 1, ok=True, requests=4, ttft_p50=0.3, latency_p50=1.0))
    client, _ = await fleet([FakeNeuron("a")], models=[entry("m")], gateway={"bench_db": str(store.path)})
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)",
        str(store.path),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert (await holder.stdout.readline()).strip() == b"locked"
        for _ in range(3):  # the first read waits for the lock in a thread; later pages show what they have
            for path in ("/ui", "/v1/models"):
                began = time.monotonic()
                resp = await client.get(path)
                took = time.monotonic() - began
                assert resp.status == 200 and took < 0.1, (path, took)
        assert "Bench" in await (await client.get("/ui")).text()
    finally:
        holder.kill()
        await holder.wait()
    for _ in range(100):  # the lock is gone: the next read shows the results
        page = await (await client.get("/ui")).text()
        if "<svg" in page:
            break
        await asyncio.sleep(0.05)
    assert "<svg" in page and "0.1.0" in page


async def test_the_page_lists_batches_and_an_admin_cancels_one(fleet):
    a = FakeNeuron("gpu1")
    a.preload("chat")
    a.slow_marker, a.slow_seconds = "question", 0.3
    keys = {"keys": [{"name": "alice", "key": "sk-alice"}, {"name": "ops", "key": "sk-ops", "scopes": ["admin"]}]}
    client, _ = await fleet([a], models=[entry("chat", 600)], auth=keys)
    api = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="sk-alice", max_retries=0)
    rows = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "chat", "messages": [{"role": "user", "content": "question"}]},
        }
        for i in range(20)
    ]
    upload = await api.files.create(file=("in.jsonl", "\n".join(json.dumps(r) for r in rows).encode()), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await sign_in(client, "sk-alice")
    page = await (await client.get("/ui")).text()
    assert f'data-batch="{batch.id}"' in page and "alice" in page and "in_progress" in page
    assert f"/ui/batches/{batch.id}/cancel" not in page  # no button for an inference key
    refused = await client.post(f"/ui/batches/{batch.id}/cancel", allow_redirects=False)
    assert refused.status == 403
    await client.post("/ui/logout", allow_redirects=False)
    await sign_in(client, "sk-ops")
    page = await (await client.get("/ui")).text()
    assert f"/ui/batches/{batch.id}/cancel" in page
    cross = await client.post(
        f"/ui/batches/{batch.id}/cancel", headers={"Origin": "http://evil.example"}, allow_redirects=False
    )
    assert cross.status == 403
    done = await client.post(f"/ui/batches/{batch.id}/cancel", allow_redirects=False)
    assert done.status == 303
    assert f"cancelling {batch.id}" in await (await client.get(done.headers["Location"])).text()
    await until_status(api, batch.id, ("cancelled",))  # the line running ends first
    again = await client.post(f"/ui/batches/{batch.id}/cancel", allow_redirects=False)
    assert "cancel failed" in await (await client.get(again.headers["Location"])).text()
