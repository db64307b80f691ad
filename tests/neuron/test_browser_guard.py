"""A web page cannot drive a neuron: the cross-site load of the hardening report runs nothing.

The report's attack: a page POSTs ``/models/load`` to 127.0.0.1:13131 as ``text/plain`` (no CORS preflight)
with ``options.binary = "/bin/echo"``; the neuron ran it. Now: wrong content type → 415, a foreign Origin or
Host → 403, and executables, arguments and URLs are not load-request options at all → 422.
"""

from __future__ import annotations

import json

import pytest

from helexa_external import External
from helexa_llamacpp import LlamaCpp
from tests.fakes.fake_harness import FakeHarness

HARNESSES = {"fake": FakeHarness, "llamacpp": LlamaCpp, "external": External}
ATTACK = {
    "model_id": "x",
    "harness": "llamacpp",
    "source": "fake-Q4_K_M.gguf",
    "options": {"binary": "/bin/echo", "extra_args": ["CSRF-RAN"]},
}


async def assert_nothing_ran(client):
    models = (await (await client.get("/models")).json())["models"]
    assert all(m["status"] != "loaded" for m in models), models


async def test_a_text_plain_post_from_a_page_is_refused(neuron):
    client = await neuron(harnesses=HARNESSES)
    resp = await client.post("/models/load", data=json.dumps(ATTACK), headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    error = (await resp.json())["error"]
    assert "application/json" in error["message"] and error["code"] == "unsupported_media_type"
    await assert_nothing_ran(client)


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://198.51.100.4:8000"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example:13131"},  # DNS rebinding: a name the attacker controls, resolved to 127.0.0.1
    ],
)
async def test_cross_site_and_rebound_requests_are_refused(neuron, headers):
    client = await neuron(harnesses=HARNESSES)
    resp = await client.post("/models/load", json=ATTACK, headers=headers)
    assert resp.status == 403, await resp.text()
    assert (await resp.json())["error"]["type"] == "permission_error"
    await assert_nothing_ran(client)


async def test_configured_names_and_same_origin_pages_pass(neuron):
    client = await neuron(neuron={"allowed_hosts": ["beast.internal"]}, harnesses=HARNESSES)
    for headers in ({"Host": "beast.internal:13131"}, {"Host": "localhost:13131"}, {"Origin": "http://localhost:1"}):
        assert (await client.get("/health", headers=headers)).status == 200, headers


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"binary": "/bin/echo"}, "binary"),
        ({"extra_args": ["CSRF-RAN"]}, "extra_args"),
        ({"ctx_size": 2048, "binary": "/bin/sh"}, "binary"),
    ],
)
async def test_executables_and_arguments_are_not_load_options(neuron, options, named):
    client = await neuron(harnesses=HARNESSES)
    body = {**ATTACK, "options": options}
    resp = await client.post("/models/load", json=body)
    assert resp.status == 422
    error = (await resp.json())["error"]
    assert error["kind"] == "invalid_options" and repr(named) in error["message"]
    assert "ctx_size" in error["suggestion"]  # what a load request may set
    await assert_nothing_ran(client)


async def test_an_external_url_comes_only_from_config(neuron):
    configured = {"id": "ext", "harness": "external", "source": "http://127.0.0.1:9/v1"}
    client = await neuron(harnesses=HARNESSES, models=[configured])
    resp = await client.post(
        "/models/load", json={"model_id": "other", "harness": "external", "source": "http://attacker.example/v1"}
    )
    assert resp.status == 422 and "configuration" in (await resp.json())["error"]["message"]
    resp = await client.post("/models/load", json={"model_id": "ext", "source": "http://attacker.example/v1"})
    assert resp.status == 422


async def test_safe_options_from_a_request_are_merged_over_the_catalogue(neuron):
    from helexa.neuron.routes import manager_key
    from helexa.wire.neuron import ModelSpec

    entry = {"id": "g", "harness": "llamacpp", "source": "fake-Q4_K_M.gguf", "options": {"threads": 2}}
    client = await neuron(harnesses=HARNESSES, models=[entry])
    spec = client.app[manager_key].specs.from_request(ModelSpec(model_id="g", options={"ctx_size": 2048}))
    assert spec.options == {"threads": 2, "ctx_size": 2048} and spec.harness == "llamacpp"


async def test_wrong_neuron_tokens_are_throttled(neuron):
    client = await neuron(neuron={"token": "the-neuron-token"}, harnesses=HARNESSES)
    wrong = {"Authorization": "Bearer not-it"}
    statuses = [(await client.get("/models", headers=wrong)).status for _ in range(30)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    right = await client.get("/models", headers={"Authorization": "Bearer the-neuron-token"})
    assert right.status == 429 and "Retry-After" in right.headers
