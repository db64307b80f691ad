"""The gateway over several fake neurons: catalogue, routing, cold loads, eviction, failures, auth, metrics."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from helexa.gateway.state import lifecycle_key, router_key
from tests.conftest import until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def chat(client, model, **extra):
    return await client.post("/v1/chat/completions", json={"model": model, **CHAT, **extra})


def metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_merged_catalogue_and_aliases(fleet):
    a, b = FakeNeuron("a"), FakeNeuron("b")
    a.preload("loaded-a", 4000)
    b.preload("loaded-b", 4000)
    client, _ = await fleet(
        [a, b], models=[entry("cold", aliases=["c"]), entry("loaded-a"), entry("too-big", vram_mb=99999)]
    )
    data = (await (await client.get("/v1/models")).json())["data"]
    by_id = {m["id"]: m for m in data}
    assert set(by_id) == {"loaded-a", "loaded-b", "cold", "too-big"}
    assert (by_id["too-big"]["status"], by_id["too-big"]["unavailable_kind"]) == ("unavailable", "no_placement")
    assert by_id["loaded-a"]["status"] == "loaded" and by_id["loaded-a"]["loaded_on"] == ["a"]
    assert by_id["cold"]["status"] == "available" and by_id["cold"]["aliases"] == ["c"]
    assert all(m["object"] == "model" and m["owned_by"] == "helexa" for m in data)
    assert (await (await client.get("/v1/models/c")).json())["id"] == "cold"
    assert (await client.get("/v1/models/nope")).status == 404


async def test_the_catalogue_says_what_needs_a_download_and_what_cannot_run(fleet):
    from helexa.wire.neuron import DownloadInfo, ModelInfo, ModelStatus

    a = FakeNeuron("a")
    a.models["pulled"] = ModelInfo(id="pulled", availability="local")
    a.models["remote"] = ModelInfo(id="remote", availability="download", download_bytes=5 * 2**30)
    a.models["gated"] = ModelInfo(id="gated", availability="unavailable", unavailable_kind="auth_required")
    a.models["fetching"] = ModelInfo(
        id="fetching",
        status=ModelStatus.DOWNLOADING,
        download=DownloadInfo(source="hf:o/n", bytes_done=10, bytes_total=40, bytes_per_second=5.0),
    )
    models = [entry(m) for m in ("pulled", "remote", "gated", "fetching", "unchecked")]
    client, _ = await fleet([a], models=models)
    by_id = {m["id"]: m for m in (await (await client.get("/v1/models")).json())["data"]}
    assert by_id["pulled"]["status"] == "available" and by_id["unchecked"]["status"] == "available"
    assert (by_id["remote"]["status"], by_id["remote"]["download_bytes"]) == ("needs_download", 5 * 2**30)
    assert (by_id["gated"]["status"], by_id["gated"]["unavailable_kind"]) == ("unavailable", "auth_required")
    assert by_id["fetching"]["status"] == "downloading"
    assert by_id["fetching"]["download"]["bytes_done"] == 10 and by_id["fetching"]["download"]["bytes_total"] == 40
    fleet_view = await (await client.get("/fleet")).json()
    (neuron,) = fleet_view["neurons"]
    assert {m["id"]: m["download"] for m in neuron["models"]}["fetching"]["bytes_per_second"] == 5.0


async def test_routes_to_the_loaded_replica_and_the_least_busy_one(fleet):
    a, b = FakeNeuron("a", chunk_delay=0.05), FakeNeuron("b", chunk_delay=0.05)
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b])
    slow = asyncio.create_task(chat(client, "m", stream=True))
    await until(lambda: len(a.served + b.served) == 1, 5, "the slow stream reached a neuron")
    first = a.served + b.served
    assert len(first) == 1
    resp = await chat(client, "m")
    assert resp.status == 200
    busy = first[0] and ("a" if a.served else "b")
    idle = b if busy == "a" else a
    assert idle.served == ["m"]
    await (await slow).read()


async def test_cold_load_with_50_concurrent_requests_loads_once(fleet):
    a = FakeNeuron("a", load_delay=0.3)
    client, _ = await fleet([a], models=[entry("cold")])
    resps = await asyncio.gather(*(chat(client, "cold") for _ in range(50)))
    assert [r.status for r in resps] == [200] * 50
    assert a.loads == ["cold"]
    assert a.auth_seen[0] == "Bearer tok-a"
    text = await (await client.get("/fleet")).text()
    assert '"loading":[]' in text
    metrics = client.app  # metrics live on the gateway's registry
    from prometheus_client import generate_latest

    from helexa.server.app import registry_key

    exported = generate_latest(metrics[registry_key]).decode()
    assert metric(exported, "helexa_gateway_cold_starts_total", model="cold", neuron="a") == 1
    assert metric(exported, "helexa_gateway_queue_wait_seconds_count", model="cold") == 50


async def test_full_wait_queue_answers_503_with_retry_after(fleet):
    a = FakeNeuron("a", load_delay=0.5)
    client, _ = await fleet([a], models=[entry("cold")], gateway={"load_queue_limit": 2})
    resps = await asyncio.gather(*(chat(client, "cold") for _ in range(5)))
    statuses = sorted(r.status for r in resps)
    assert statuses == [200, 200, 503, 503, 503]
    busy = next(r for r in resps if r.status == 503)
    assert busy.headers["Retry-After"] == "5"
    error = (await busy.json())["error"]
    assert error["type"] == "service_unavailable_error" and "wait for model 'cold'" in error["message"]


async def test_load_failure_reaches_every_waiter_as_the_neurons_422(fleet):
    reject = {"kind": "quant_not_found", "message": "no 'Q4' weights", "suggestion": "did you mean quant = 'Q4_K_M'?"}
    a = FakeNeuron("a", load_delay=0.1, reject=reject)
    client, _ = await fleet([a], models=[entry("cold")])
    resps = await asyncio.gather(*(chat(client, "cold") for _ in range(5)))
    assert [r.status for r in resps] == [422] * 5
    error = (await resps[0].json())["error"]
    assert (error["kind"], error["suggestion"], error["code"]) == (
        "quant_not_found",
        reject["suggestion"],
        "preflight_failed",
    )
    assert a.loads == ["cold"]


async def test_lru_eviction_spares_pinned_and_busy_models(fleet):
    a = FakeNeuron("a", devices=[24000], chunk_delay=0.1)
    a.preload("oldest", 8000)
    a.preload("pinned", 8000)
    a.preload("busy", 8000)
    client, _ = await fleet(
        [a], models=[entry("oldest"), entry("pinned", pinned_on=["a"]), entry("busy"), entry("new")]
    )
    lifecycle = client.app[lifecycle_key]
    state = lifecycle.registry.neurons["a"]
    state.last_used.update({"pinned": 0.0, "busy": 1.0, "oldest": 2.0})  # pinned and busy are older still
    streaming = asyncio.create_task(chat(client, "busy", stream=True))
    await until(lambda: "busy" in a.served, 5, "the busy model's stream reached its neuron")
    from prometheus_client import generate_latest

    from helexa.server.app import registry_key

    during = generate_latest(client.app[registry_key]).decode()
    assert metric(during, "helexa_gateway_requests_in_flight", model="busy", neuron="a") == 1
    resp = await chat(client, "new")
    assert resp.status == 200, await resp.text()
    assert a.unloads == [("oldest", False)]
    assert set(a.models) == {"pinned", "busy", "new"}
    await (await streaming).read()
    after = generate_latest(client.app[registry_key]).decode()
    assert metric(after, "helexa_gateway_evictions_total", model="oldest", neuron="a") == 1
    assert metric(after, "helexa_gateway_requests_in_flight", model="busy", neuron="a") == 0
    assert metric(after, "helexa_gateway_model_load_seconds_count", model="new", neuron="a") == 1


async def test_priority_eviction_takes_the_lowest_priority(fleet):
    a = FakeNeuron("a", devices=[24000])
    a.preload("low", 12000)
    a.preload("high", 12000)
    client, _ = await fleet(
        [a],
        models=[entry("low", 12000, priority=1), entry("high", 12000, priority=9), entry("new", 12000, priority=5)],
        eviction={"strategy": "priority"},
    )
    client.app[lifecycle_key].registry.neurons["a"].last_used.update({"high": 0.0, "low": 5.0})
    assert (await chat(client, "new")).status == 200
    assert a.unloads == [("low", False)]


async def test_nothing_to_evict_is_a_clear_503(fleet):
    a = FakeNeuron("a", devices=[16000])
    a.preload("pinned", 16000)
    client, _ = await fleet([a], models=[entry("pinned", 16000, pinned_on=["a"]), entry("new", 8000)])
    resp = await chat(client, "new")
    assert resp.status == 503
    error = (await resp.json())["error"]
    assert error["code"] == "no_capacity" and "is pinned" in error["message"]


async def test_full_stop_after_unloads_makes_the_unload_a_full_stop(fleet):
    a = FakeNeuron("a", devices=[10000])
    client, _ = await fleet([a], models=[entry("x", 8000), entry("y", 8000)], eviction={"full_stop_after_unloads": 2})
    for model in ("x", "y", "x"):
        assert (await chat(client, model)).status == 200
    assert a.unloads == [("x", False), ("y", True)]


async def test_unknown_model_and_bad_bodies(fleet):
    client, _ = await fleet([FakeNeuron("a")])
    resp = await chat(client, "nope")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "/v1/models" in error["message"]
    resp = await client.post("/v1/chat/completions", data=b"{oops", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await client.post("/v1/chat/completions", json={"messages": []})).status == 400


async def test_stream_usage_is_measured_but_hidden_when_not_asked(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a])
    text = await (await chat(client, "m", stream=True)).text()
    assert '"usage"' not in text and text.endswith("data: [DONE]\n\n")
    text = await (await chat(client, "m", stream=True, stream_options={"include_usage": True})).text()
    assert '"usage"' in text
    exported = await (await client.get("/fleet")).text()  # not metrics, but proves the app is alive
    assert exported
    from prometheus_client import generate_latest

    from helexa.server.app import registry_key

    m = generate_latest(client.app[registry_key]).decode()
    assert metric(m, "helexa_gateway_completion_tokens_total", model="m", neuron="a") == 2 * 5
    assert metric(m, "helexa_gateway_prompt_tokens_total", model="m", neuron="a") == 14
    assert metric(m, "helexa_gateway_time_to_first_token_seconds_count", model="m", neuron="a") == 2
    assert metric(m, "helexa_gateway_output_tokens_per_second_count", model="m", neuron="a") == 2
    assert metric(m, "helexa_gateway_requests_total", model="m", neuron="a", status="200") == 2
    assert metric(m, "helexa_gateway_request_duration_seconds_count", model="m", neuron="a") == 2
    assert metric(m, "helexa_gateway_neuron_up", neuron="a") == 1


async def test_neuron_dying_mid_stream_ends_with_an_error_event(fleet):
    a = FakeNeuron("a", die_after_chunks=3, chunk_delay=0.01)
    a.preload("m")
    client, _ = await fleet([a])
    resp = await chat(client, "m", stream=True)
    assert resp.status == 200
    text = await asyncio.wait_for(resp.text(), 5)
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    last = json.loads(events[-1][6:])
    assert last["error"]["code"] == "upstream_error" and "broke off" in last["error"]["message"]
    from prometheus_client import generate_latest

    from helexa.server.app import registry_key

    m = generate_latest(client.app[registry_key]).decode()
    assert metric(m, "helexa_gateway_upstream_errors_total", model="m", neuron="a", code="upstream_error") == 1


async def test_dead_replica_is_skipped_before_any_byte(fleet):
    a, b = FakeNeuron("a"), FakeNeuron("b")
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b])
    await a.server.close()  # a goes away between polls
    for _ in range(3):
        resp = await chat(client, "m")
        assert resp.status == 200
    assert b.served and not a.served


async def test_neuron_goes_down_and_comes_back(fleet, aiohttp_server):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a])
    port = a.server.port
    await a.server.close()
    registry = client.app[lifecycle_key].registry
    deadline = time.monotonic() + 5
    while registry.neurons["a"].healthy:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert (await (await client.get("/v1/models")).json())["data"] == []
    gone = await chat(client, "m")  # not a 404: the model is still the fleet's, on a neuron that is down
    assert gone.status == 503 and "do not answer now" in (await gone.json())["error"]["message"]
    fleet_report = await (await client.get("/fleet")).json()
    assert fleet_report["neurons"][0]["healthy"] is False and fleet_report["neurons"][0]["last_error"]
    a.server = await aiohttp_server(a.app(), port=port)
    deadline = time.monotonic() + 10
    while not registry.neurons["a"].healthy:
        assert time.monotonic() < deadline, "the neuron never came back"
        await asyncio.sleep(0.05)
    assert (await chat(client, "m")).status == 200


async def test_api_keys(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a], auth={"api_keys": ["sk-1", "sk-2"]})
    resp = await chat(client, "m")
    assert resp.status == 401
    assert (await resp.json())["error"]["type"] == "authentication_error"
    assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-bad"})).status == 401
    assert (await client.get("/fleet")).status == 401
    assert (await client.get("/healthz")).status == 200
    assert (await chat_with(client, {"Authorization": "Bearer sk-2"})).status == 200
    assert (await chat_with(client, {"x-api-key": "sk-1"})).status == 200
    assert a.auth_seen[-1] == "Bearer tok-a"  # the neuron token, never the client's key
    resp = await client.post("/v1/messages", json={}, headers={})
    assert resp.status == 401
    assert (await resp.json())["type"] == "error"  # Anthropic routes answer in Anthropic's envelope


async def chat_with(client, headers):
    return await client.post("/v1/chat/completions", json={"model": "m", **CHAT}, headers=headers)


async def test_admin_load_and_unload(fleet):
    a = FakeNeuron("a")
    client, _ = await fleet([a], models=[entry("m")])
    resp = await client.post("/admin/models/m/load")
    assert (await resp.json()) == {"model": "m", "status": "loaded", "neuron": "a"}
    resp = await client.post("/admin/models/m/unload")
    assert (await resp.json())["neurons"] == ["a"]
    assert (await client.post("/admin/models/m/unload")).status == 404
    assert (await client.post("/admin/models/nope/load")).status == 404


async def test_client_disconnect_stops_the_upstream_stream(fleet):
    a = FakeNeuron("a", chunk_delay=0.05, reply=" ".join(["w"] * 200))
    a.preload("m")
    client, _ = await fleet([a])
    resp = await chat(client, "m", stream=True)
    await resp.content.readline()
    resp.close()
    state = client.app[lifecycle_key].registry.neurons["a"]
    deadline = time.monotonic() + 5
    while state.in_flight.get("m"):
        assert time.monotonic() < deadline, "the gateway kept the request open"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("path", ["/v1/embeddings"])
async def test_other_openai_routes_pass_through(fleet, path):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a])
    resp = await client.post(path, json={"model": "m", "input": "x"})
    assert resp.status == 200
    assert (await resp.json())["data"][0]["embedding"] == [1.0]


async def test_models_that_vanish_from_a_neuron_are_pruned(fleet):
    a = FakeNeuron("a")
    a.preload("m")
    client, _ = await fleet([a])
    assert [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]] == ["m"]
    a.models.clear()  # unloaded behind the gateway's back
    deadline = time.monotonic() + 5
    while (await (await client.get("/v1/models")).json())["data"]:
        assert time.monotonic() < deadline, "the vanished model was never pruned"
        await asyncio.sleep(0.05)


async def test_status_and_models_commands(fleet):
    from click.testing import CliRunner

    from helexa.cli.commands import cli

    a = FakeNeuron("a", devices=[24000, 24000])
    a.preload("m", 6000)
    client, _ = await fleet([a], models=[entry("m", aliases=["mm"])])
    url = str(client.make_url("")).rstrip("/")
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--url", url, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["neurons"][0]["name"] == "a" and report["neurons"][0]["healthy"] is True
    assert report["neurons"][0]["devices"][0]["vram_used_mb"] == 6000
    table = (await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--url", url])).output
    assert "5.9 GiB / 46.9 GiB" in table and "2 GPU" in table
    models = (await asyncio.to_thread(CliRunner().invoke, cli, ["models", "--url", url])).output
    assert "m " in models and "loaded" in models and "mm" in models
    down = await asyncio.to_thread(CliRunner().invoke, cli, ["status", "--url", "http://127.0.0.1:9"])
    assert down.exit_code == 1 and "cannot reach the gateway" in down.output


def anthropic_events(text: str) -> list[tuple[str, dict]]:
    out = []
    for block in text.split("\n\n"):
        if block:
            kind, data = block.split("\n", 1)
            out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


async def test_anthropic_stream_pings_while_the_engine_is_silent(fleet):
    a = FakeNeuron("a", chunk_delay=0.2, reply="slow words here")
    a.preload("m")
    client, _ = await fleet([a], gateway={"keepalive_seconds": 0.05})
    body = {"model": "m", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/messages", json=body)
    events = anthropic_events(await resp.text())
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[1] == "ping" and kinds[-1] == "message_stop"
    assert kinds.count("ping") >= 3, kinds
    text = "".join(d["delta"]["text"] for k, d in events if k == "content_block_delta")
    assert text == "slow words here "


async def test_anthropic_stream_ends_with_an_error_event_when_the_neuron_dies(fleet):
    a = FakeNeuron("a", die_after_chunks=3)
    a.preload("m")
    client, _ = await fleet([a])
    body = {"model": "m", "max_tokens": 16, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post(
        "/v1/messages", json=body, headers={"x-api-key": "ignored", "anthropic-version": "2023-06-01"}
    )
    events = anthropic_events(await asyncio.wait_for(resp.text(), 5))
    kind, data = events[-1]
    assert kind == "error"
    assert data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "broke off" in data["error"]["message"]


async def test_routing_counts_the_engines_own_queue(fleet):
    a, b = FakeNeuron("a"), FakeNeuron("b")
    a.preload("m")
    b.preload("m")
    a.models["m"].waiting = 5  # a's engine reports a queue; the gateway has nothing in flight anywhere
    client, _ = await fleet([a, b])
    for _ in range(3):
        assert (await chat(client, "m")).status == 200
    assert b.served == ["m", "m", "m"] and not a.served


async def test_a_sleeping_model_is_woken_where_it_sleeps(fleet):
    from helexa.wire.neuron import ModelStatus

    a, b = FakeNeuron("a", devices=[24000]), FakeNeuron("b", devices=[80000])
    a.preload("m", 8000)
    a.models["m"].status = ModelStatus.SLEEPING
    a.vram["m"] = 0  # asleep: its memory is free
    client, _ = await fleet([a, b], models=[entry("m", 8000)])
    assert (await chat(client, "m")).status == 200
    assert a.loads == ["m"] and b.loads == []  # not placed on b, which has more free memory


async def test_prefix_affinity_sends_a_conversation_back_to_the_replica_that_served_it(fleet):
    a, b = FakeNeuron("a"), FakeNeuron("b")
    a.preload("m")
    b.preload("m")
    client, _ = await fleet([a, b])
    lifecycle = client.app[lifecycle_key]
    for conversation in ("c1", "c2", "c3", "c4"):
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt_cache_key": conversation}
        for turn in range(3):
            state = lifecycle.registry.neurons["a" if turn % 2 else "b"]
            state.in_flight["m"] = 1  # the replica that did not serve last is idler every other turn
            assert (await client.post("/v1/chat/completions", json=body)).status == 200
            state.in_flight["m"] = 0
        served = [n for n in (a, b) if n.served]
        assert served, "no neuron served"
    first = {}
    for key, neuron in client.app[router_key]._affinity.items():
        first[key[1]] = neuron
    # each conversation stayed on one neuron for all its turns
    assert len(a.served) % 3 == 0 and len(b.served) % 3 == 0
    assert set(first) == {"n:c1", "n:c2", "n:c3", "n:c4"}
