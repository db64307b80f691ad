"""Model lifecycle through the neuron API, with real engine processes (the fake engine)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time

import aiohttp

from tests.conftest import alive, descendants
from tests.neuron.conftest import fake_model


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server would: TIME_WAIT is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def load(client, model_id="fake-model", **body):
    return await client.post(
        "/models/load", json={"model_id": model_id, "harness": "fake", "source": "fake-Q4_K_M.gguf", **body}
    )


def engine(client, model_id="fake-model"):
    from helexa.neuron.routes import manager_key

    manager = client.app[manager_key]
    return manager.harnesses["fake"], manager


async def wait_status(client, model_id, status, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        models = (await (await client.get("/models")).json())["models"]
        found = [m for m in models if m["id"] == model_id]
        if found and found[0]["status"] == status:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{model_id} never became {status}: {models}")


async def test_discovery_on_a_cpu_only_host(neuron):
    client = await neuron()
    body = await (await client.get("/discovery")).json()
    assert body["devices"] == [] or all("vram_total_mb" in d for d in body["devices"])
    assert body["harnesses"] == ["fake"]
    assert body["host"]["cpu_count"] >= 1 and body["host"]["ram_total_mb"] > 0
    health = await (await client.get("/health")).json()
    assert health["uptime_s"] >= 0


async def test_load_serve_unload(neuron):
    client = await neuron()
    resp = await load(client)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["status"] == "loaded"
    assert body["endpoint"].endswith("/v1")
    harness, _ = engine(client)
    pid = harness.pid("fake-model")
    port = int(harness._engines["fake-model"][1])
    assert alive(pid)
    assert (await (await client.get("/models/fake-model/endpoint")).json())["url"].endswith("/v1")
    logs = await (await client.get("/models/fake-model/logs")).text()
    engine_pid = int(logs.split("fake engine pid ")[1].split()[0])
    assert engine_pid in descendants(pid), "the engine runs under its guard, the process the neuron started"
    chat = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    assert chat.status == 200
    assert chat.headers["x-helexa-origin"] == "engine"
    assert (await chat.json())["choices"][0]["message"]["content"] == "Hello from the fake engine."
    resp = await client.post("/models/unload", json={"model_id": "fake-model"})
    assert (await resp.json())["status"] == "unloaded"
    assert not alive(pid)
    assert port_free(port)
    assert (await client.get("/models/fake-model/endpoint")).status == 404
    gone = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    assert gone.status == 404
    assert (await gone.json())["error"]["code"] == "model_not_found"


async def test_concurrent_loads_share_one_engine(neuron):
    client = await neuron()
    resps = await asyncio.gather(*(load(client, options={"flags": ["--startup-delay", "0.5"]}) for _ in range(10)))
    assert [r.status for r in resps] == [200] * 10
    harness, _ = engine(client)
    logs = "\n".join(harness.logs("fake-model"))
    assert logs.count("fake engine pid") == 1


async def test_load_is_idempotent(neuron):
    client = await neuron()
    assert (await load(client)).status == 200
    harness, _ = engine(client)
    pid = harness.pid("fake-model")
    assert (await load(client)).status == 200
    assert harness.pid("fake-model") == pid


async def test_load_without_waiting_answers_202(neuron):
    client = await neuron()
    resp = await load(client, wait=False, options={"flags": ["--startup-delay", "0.5"]})
    assert resp.status == 202
    assert (await resp.json())["status"] == "loading"
    await wait_status(client, "fake-model", "loaded")


async def test_engine_crash_marks_failed_and_next_load_recovers(neuron):
    client = await neuron()
    assert (await load(client)).status == 200
    harness, _ = engine(client)
    pid = harness.pid("fake-model")
    os.kill(pid, signal.SIGKILL)
    failed = await wait_status(client, "fake-model", "failed")
    assert "killed by SIGKILL" in failed["last_error"]
    resp = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    assert resp.status == 404
    assert "status: failed" in (await resp.json())["error"]["message"]
    assert (await load(client)).status == 200
    assert alive(harness.pid("fake-model"))
    metrics = await (await client.get("/metrics")).text()
    assert 'helexa_neuron_engine_crashes_total{model="fake-model"} 1.0' in metrics


async def test_engine_that_exits_at_start_fails_with_its_reason_and_keeps_its_output_for_admins(neuron):
    """The engine's output may hold other users' prompts: the reason goes to every client (load errors,
    ``last_error`` in /models and the gateway's /fleet), the output only to the engine-log route."""
    client = await neuron()
    flags = ["--say", "user 7 asked: my secret prompt", "--exit-at-start", "7"]
    resp = await load(client, options={"flags": flags})
    assert resp.status == 502
    error = (await resp.json())["error"]
    assert error["code"] == "engine_failed"
    assert "exited with code 7" in error["message"] and "helexa logs fake-model" in error["message"]
    assert "secret prompt" not in error["message"] and "failing at start" not in error["message"]
    failed = await wait_status(client, "fake-model", "failed")
    assert "exited with code 7" in failed["last_error"] and "secret prompt" not in failed["last_error"]
    logs = await (await client.get("/models/fake-model/logs")).text()
    assert "my secret prompt" in logs and "failing at start as asked" in logs


async def test_engine_that_never_gets_ready_times_out(neuron):
    client = await neuron(neuron={"ready_timeout_seconds": 1})
    began = time.monotonic()
    resp = await load(client, options={"flags": ["--fail-health"]})
    assert resp.status == 502
    assert "not ready within 1s" in (await resp.json())["error"]["message"]
    assert time.monotonic() - began < 8
    harness, _ = engine(client)
    assert harness.pid("fake-model") is None


async def test_engine_ignoring_sigterm_is_killed(neuron):
    client = await neuron(neuron={"stop_timeout_seconds": 0.5})
    assert (await load(client, options={"flags": ["--ignore-sigterm"]})).status == 200
    harness, _ = engine(client)
    pid = harness.pid("fake-model")
    began = time.monotonic()
    assert (await client.post("/models/unload", json={"model_id": "fake-model"})).status == 200
    assert 0.4 < time.monotonic() - began < 5
    assert not alive(pid)


async def test_catalogue_model_loads_on_demand(neuron):
    client = await neuron(models=[fake_model("cat-model", aliases=["cat"])])
    models = (await (await client.get("/models")).json())["models"]
    assert [(m["id"], m["harness"], m["status"]) for m in models] == [("cat-model", "fake", "unloaded")]
    resp = await client.post("/v1/chat/completions", json={"model": "cat", "messages": []})
    assert resp.status == 200
    await wait_status(client, "cat-model", "loaded")


async def test_load_on_demand_can_be_off(neuron):
    client = await neuron(neuron={"load_on_demand": False}, models=[fake_model("cat-model")])
    resp = await client.post("/v1/chat/completions", json={"model": "cat-model", "messages": []})
    assert resp.status == 404
    assert "POST /models/load" in (await resp.json())["error"]["message"]


async def test_unknown_model_gets_openai_404(neuron):
    client = await neuron()
    resp = await client.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["type"] == "not_found_error" and error["param"] == "model"


async def test_bad_inference_bodies_get_400(neuron):
    client = await neuron()
    for body, expected in [
        (b"", "request body is empty"),
        (b"{nope", "not valid JSON"),
        (b'{"messages": []}', "'model' is required"),
        (b'{"model": 5}', "Expected `str`, got `int`"),
    ]:
        resp = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400
        assert expected in (await resp.json())["error"]["message"]
    resp = await client.post("/models/load", json={"model_id": "../../etc/passwd"})
    assert resp.status == 400
    assert "model id not allowed" in (await resp.json())["error"]["message"]
    assert (await client.get("/models/a..b/logs")).status == 400
    assert (await client.post("/models/unload", json={"model_id": "never-loaded"})).status == 404


async def test_token_protects_everything_but_liveness_version_and_metrics(neuron):
    client = await neuron(neuron={"token": "s3cret"})
    for path in ("/healthz", "/version", "/metrics"):
        assert (await client.get(path)).status == 200, path
    for path in ("/models", "/discovery", "/health", "/v1/models", "/models/x/logs"):  # logs may hold prompts
        assert (await client.get(path)).status == 401, path
    assert (await client.get("/models", headers={"Authorization": "Bearer s3cret"})).status == 200
    resp = await load(client)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert (await resp.json())["error"]["type"] == "authentication_error"
    resp = await client.post("/v1/chat/completions", json={"model": "x"}, headers={"Authorization": "Bearer wrong"})
    assert resp.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    resp = await client.post(
        "/models/load", json={"model_id": "fake-model", "harness": "fake", "source": "fake-Q4_K_M.gguf"}, headers=auth
    )
    assert resp.status == 200


async def test_client_disconnect_aborts_the_engine_stream(neuron):
    client = await neuron()
    flags = ["--reply", "x" * 400, "--chunk-size", "1", "--chunk-delay", "0.02"]
    assert (await load(client, options={"flags": flags})).status == 200
    _, manager = engine(client)
    engine_url = manager.records["fake-model"].endpoint.removesuffix("/v1")
    resp = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": [], "stream": True})
    await resp.content.readline()
    resp.close()  # the client goes away mid-stream
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            stats = await (
                await session.get(f"{engine_url}/stats", headers=manager.credentials.headers(engine_url))
            ).json()
            if stats["aborted"]:
                break
            await asyncio.sleep(0.05)
    assert stats == {"requests": 1, "aborted": 1, "completed": 0}
    assert manager.records["fake-model"].in_flight == 0


async def test_engine_dying_mid_stream_ends_with_an_error_event(neuron):
    client = await neuron()
    flags = ["--reply", "y" * 200, "--chunk-size", "1", "--chunk-delay", "0.01"]
    assert (await load(client, options={"flags": flags})).status == 200
    harness, _ = engine(client)
    resp = await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": [], "stream": True})
    first = await resp.content.readline()
    os.kill(harness.pid("fake-model"), signal.SIGKILL)
    text = (first + await asyncio.wait_for(resp.read(), 10)).decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), "only whole events reach the client"
    last = [e for e in text.split("\n\n") if e][-1]
    assert last.startswith('data: {"error":')
    assert "engine stream broke off" in last


async def test_neuron_metrics(neuron):
    client = await neuron()
    assert (await load(client)).status == 200
    await client.post("/v1/chat/completions", json={"model": "fake-model", "messages": []})
    text = await (await client.get("/metrics")).text()
    assert 'helexa_neuron_model_load_seconds_count{harness="fake",model="fake-model"} 1.0' in text
    assert 'helexa_neuron_model_loads_total{model="fake-model",result="loaded"} 1.0' in text
    assert 'helexa_neuron_requests_total{endpoint="chat/completions",model="fake-model",status="200"} 1.0' in text
    assert 'helexa_neuron_requests_in_flight{model="fake-model"} 0.0' in text


MARKED = (
    "Okay.<think>The user wants weather.</think>"
    '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
)


async def test_engine_markers_become_reasoning_and_tool_calls_through_the_neuron(neuron):
    """A real engine process streams <think>/<tool_call> text in 3-character chunks; the openai SDK sees
    structured fields, streaming and not, and can turn the stream back into the non-streaming message."""
    import openai

    client = await neuron()
    assert (await load(client, options={"flags": ["--reply", MARKED, "--chunk-size", "3"]})).status == 200
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Weather in Oslo?"}]

    whole = await sdk.chat.completions.create(model="fake-model", messages=messages)
    message = whole.choices[0].message
    assert message.content == "Okay."
    assert message.model_extra["reasoning_content"] == "The user wants weather."
    assert message.tool_calls[0].function.name == "get_weather"
    assert message.tool_calls[0].function.arguments == '{"city":"Oslo"}'
    assert whole.choices[0].finish_reason == "tool_calls"

    stream = await sdk.chat.completions.create(model="fake-model", messages=messages, stream=True)
    content, reasoning, calls, finish = "", "", {}, None
    async for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        for call in delta.tool_calls or []:
            calls.setdefault(call.index, {"name": "", "arguments": ""})
            calls[call.index]["name"] += call.function.name or ""
            calls[call.index]["arguments"] += call.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert (content, reasoning, finish) == (message.content, "The user wants weather.", "tool_calls")
    assert calls == {0: {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}


async def test_normaliser_can_be_switched_off_per_model(neuron):
    client = await neuron(models=[fake_model("raw", "--reply", MARKED, normalise=False)])
    resp = await client.post("/v1/chat/completions", json={"model": "raw", "messages": []})
    message = (await resp.json())["choices"][0]["message"]
    assert message["content"] == MARKED
    assert "tool_calls" not in message


async def test_load_request_fields_win_over_the_catalogue(neuron):
    from helexa.neuron.routes import manager_key
    from helexa.wire.neuron import ModelSpec

    client = await neuron(models=[fake_model("cat", "--reply", "x", aliases=["kitty"], tensor_parallel=1)])
    manager = client.app[manager_key]
    filled = manager.specs.complete(ModelSpec(model_id="kitty"))
    assert (filled.model_id, filled.harness, filled.source) == ("cat", "fake", "fake-Q4_K_M.gguf")
    assert filled.options == {"flags": ["--reply", "x"]} and filled.normalise is True
    kept = manager.specs.complete(ModelSpec(model_id="cat", normalise=False, options={"flags": []}))
    assert kept.normalise is False and kept.options == {"flags": []}
    unknown = manager.specs.complete(ModelSpec(model_id="other"))  # default_harness = auto, and only "fake" here
    assert (unknown.harness, unknown.source) == ("auto", "")
    resp = await client.post("/models/load", json={"model_id": "other"})
    assert resp.status == 422 and (await resp.json())["error"]["kind"] == "harness_not_installed"
