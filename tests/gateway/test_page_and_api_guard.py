"""A web page cannot drive the gateway, keys or no keys: the cross-site writes and DNS rebinding of the security
report are refused; the fleet page cannot be framed and its logs link takes only a model the neuron holds.

The report's probes (a gateway without keys, the default of ``--role both``): a cross-site ``text/plain`` POST to
``/admin/models/X/load`` loaded the model, ``/v1/chat/completions`` with a ``text/plain`` body answered 200, and
``Host: attacker.example`` answered 200, so a rebound page could read ``/v1`` and ``/fleet``.
"""

from __future__ import annotations

import json

import pytest

from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
KEYS = {"api_keys": ["sk-user"], "admin_keys": ["sk-admin"]}
ADMIN = {"Authorization": "Bearer sk-admin"}


@pytest.fixture(params=["keyless", "keys"])
async def gateway(request, fleet):
    a = FakeNeuron("gpu1")
    a.preload("m")
    auth = KEYS if request.param == "keys" else {}
    client, fakes = await fleet([a], models=[entry("m", vram_mb=1000), entry("cold", vram_mb=1000)], auth=auth)
    client.headers_for_admin = ADMIN if auth else {}  # type: ignore[attr-defined]
    client.fake = fakes["gpu1"]  # type: ignore[attr-defined]
    return client


async def test_text_plain_writes_are_refused_and_run_nothing(gateway):
    admin = gateway.headers_for_admin
    for path, body in (("/admin/models/cold/load", "{}"), ("/v1/chat/completions", json.dumps(CHAT))):
        resp = await gateway.post(path, data=body, headers={**admin, "Content-Type": "text/plain"})
        assert resp.status == 415, await resp.text()
        assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    unload = await gateway.post("/admin/models/m/unload", data="{}", headers={**admin, "Content-Type": "text/plain"})
    assert unload.status == 415
    no_body = {**admin, "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Site": "same-site"}  # fetch() with no body
    assert (await gateway.post("/admin/models/m/unload", headers=no_body)).status == 415
    assert gateway.fake.loads == [] and gateway.fake.unloads == [] and gateway.fake.served == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": "http://203.0.113.7"},  # a page served from an IP literal is as foreign as any
        {"Origin": "http://[2001:db8::1]:8080"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "attacker.example"},  # DNS rebinding
        {"Host": "attacker.example:31313"},
    ],
)
async def test_cross_site_and_rebound_requests_are_refused(gateway, headers):
    admin = gateway.headers_for_admin
    load = await gateway.post("/admin/models/cold/load", json={}, headers={**admin, **headers})
    assert load.status == 403, await load.text()
    assert (await load.json())["error"]["type"] == "permission_error"
    chat = await gateway.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-user", **headers})
    assert chat.status == 403
    assert gateway.fake.loads == [] and gateway.fake.served == []
    if "Host" in headers:  # a rebound page reads nothing either
        for path in ("/v1/models", "/fleet", "/ui"):
            read = await gateway.get(path, headers={"Authorization": "Bearer sk-user", **headers})
            assert read.status == 403, path
            assert b"gpu1" not in await read.read()


async def test_programs_and_configured_names_pass(fleet):
    a = FakeNeuron("gpu1")
    a.preload("m")
    client, _ = await fleet([a], models=[entry("m")], gateway={"allowed_hosts": ["llm.example.org"]})
    same_origin = {"Host": "127.0.0.1:31313", "Origin": "http://127.0.0.1:31313"}  # the daemon's own page
    for headers in (
        {},
        {"Host": "llm.example.org"},
        {"Host": "localhost:31313"},
        {"Origin": "http://localhost:5"},
        same_origin,
    ):
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200, (headers, await resp.text())
    other = await client.get("/v1/models", headers={"Host": "other.example.org"})
    assert other.status == 403 and "allowed_hosts" in (await other.json())["error"]["message"]


async def test_the_page_cannot_be_framed(gateway):
    resp = await gateway.get("/ui", headers=gateway.headers_for_admin)
    assert resp.status == 200
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_the_page_forms_still_work_but_not_from_other_sites(fleet):
    a = FakeNeuron("gpu1")
    client, fakes = await fleet([a], models=[entry("cold", vram_mb=1000)])
    cross = await client.post(
        "/ui/models/cold/load", data="x=1", headers={"Origin": "http://evil.example"}, allow_redirects=False
    )
    assert cross.status == 403 and fakes["gpu1"].loads == []
    host = await client.post(
        "/ui/models/cold/load", data="x=1", headers={"Host": "evil.example"}, allow_redirects=False
    )
    assert host.status == 403 and fakes["gpu1"].loads == []
    form = await client.post("/ui/models/cold/load", data={"x": "1"}, allow_redirects=False)
    assert form.status == 303 and fakes["gpu1"].loads == ["cold"]


async def test_the_page_logs_link_takes_only_a_model_the_neuron_holds(gateway):
    admin = gateway.headers_for_admin
    sneaky = await gateway.get("/ui/models/..%2F..%2Fdiscovery%3F/logs?neuron=gpu1", headers=admin)
    assert sneaky.status == 404, await sneaky.text()
    assert "hostname" not in await sneaky.text()
    cold = await gateway.get("/ui/models/cold/logs?neuron=gpu1", headers=admin)
    assert cold.status == 404  # in the catalogue, not on that neuron
    ok = await gateway.get("/ui/models/m/logs?neuron=gpu1", headers=admin)
    assert ok.status == 200 and await ok.text() == "engine log of m\n"
    assert gateway.fake.log_requests == ["/models/m/logs?lines=300"]
