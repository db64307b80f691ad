"""Metrics by Prometheus's conventions, and the shipped monitoring assets, checked with the real promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from helexa.neuron.app import make_neuron_app
from helexa.server.app import metrics_app, registry_key
from tests.conftest import ROOT, engine_ports, make_config, until
from tests.fakes.fake_harness import FakeHarness
from tests.neuron.conftest import fake_model
from tests.neuron.test_gpus import fake_nvml  # noqa: F401  (a fixture)
from tests.tools import debian_tool

MONITORING = ROOT / "docs" / "monitoring"


@pytest.fixture(scope="module")
def promtool() -> str:
    return debian_tool("promtool", "prometheus")


def run(promtool: str, *args: str, stdin: str | None = None, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )


def test_config_rules_and_rule_tests(promtool):
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
    ):
        done = run(promtool, *args)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
    rules = (MONITORING / "alerts.yml").read_text()
    for alert in ("NeuronDown", "LoadFailures", "ErrorRatio", "QueueSaturated", "GpuMemoryNearlyFull", "FirstToken"):
        assert alert in rules


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    return exprs


def test_every_dashboard_query_is_valid_promql(promtool, tmp_path):
    grafana = {"$__rate_interval": "5m", "$__range": "1h", "$model": ".*"}
    rules = []
    for i, query in enumerate(dashboard_exprs()):
        for variable, value in grafana.items():
            query = query.replace(variable, value)  # noqa: PLW2901
        rules.append({"record": f"dashboard:panel_query_{i}", "expr": query})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # JSON is YAML
    done = run(promtool, "check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
async def scrapes(aiohttp_client, tmp_path, version, fake_nvml):  # noqa: F811
    """``/metrics`` of a neuron with two (stand-in) GPUs and of a gateway in front, after real traffic."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "fake-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 1024)
    neuron_cfg = make_config(
        neuron={"model_dirs": [str(models_dir)], "port_range": engine_ports(), "stop_timeout_seconds": 2},
        models=[fake_model("m")],
    )
    neuron = await aiohttp_client(make_neuron_app(neuron_cfg, version, {"fake": FakeHarness}))
    gateway_cfg = make_config(
        neurons=[{"name": "n", "endpoint": str(neuron.make_url("")).rstrip("/")}],
        models=[{"id": "m", "harness": "fake"}],
        gateway={"poll_interval_seconds": 0.2},
    )
    gateway_app = make_gateway_app(gateway_cfg, version)
    gateway = await aiohttp_client(gateway_app)
    scraper = await aiohttp_client(metrics_app(role="gateway", registry=gateway_app[registry_key]))
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert (await gateway.post("/v1/chat/completions", json=chat)).status == 200
    stream = await gateway.post("/v1/chat/completions", json={**chat, "stream": True})
    assert stream.status == 200
    await stream.read()
    assert (await gateway.post("/v1/chat/completions", json={**chat, "model": "nope"})).status == 404
    assert (
        await gateway.post("/v1/chat/completions", data=b"{", headers={"Content-Type": "application/json"})
    ).status == 400
    assert (await neuron.post("/models/load", json={"model_id": "x", "harness": "nope"})).status == 422
    fleet = gateway_app[lifecycle_key].registry.neurons["n"]
    polled = fleet.polls
    await until(lambda: fleet.polls >= polled + 2, 5, "two more polls")  # the poller has seen the load
    return (await (await scraper.get("/metrics")).text(), await (await neuron.get("/metrics")).text())


async def test_scrapes_pass_promtool_and_count_every_error(promtool, scrapes):
    gateway, neuron = scrapes
    for text in (gateway, neuron):
        done = run(promtool, "check", "metrics", stdin=text)
        assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
    assert re.search(r'helexa_neuron_gpu_memory_total_bytes\{device="0"\} 3\.4190917632e\+10', neuron), neuron
    assert re.search(r'helexa_neuron_gpu_utilization_ratio\{device="1"\} 0\.41', neuron)
    assert 'helexa_neuron_gpu_temperature_celsius{device="0"} 55.0' in neuron
    assert re.search(
        r'helexa_gateway_errors_total\{class="4xx",code="model_not_found",route="/v1/chat/completions"\} 1', gateway
    )
    assert re.search(
        r'helexa_gateway_errors_total\{class="4xx",code="invalid_request",route="/v1/chat/completions"\} 1', gateway
    )
    assert re.search(
        r'helexa_neuron_errors_total\{class="4xx",code="preflight_failed",route="/models/load"\} 1', neuron
    )


async def test_the_dashboard_and_alerts_use_metrics_that_exist(scrapes):
    gateway, neuron = scrapes
    families = set(re.findall(r"^# TYPE (\w+) (\w+)", gateway + neuron, re.M))
    names = {name for name, _ in families}
    names |= {f"{n}_total" for n, kind in families if kind == "counter"}
    names |= {f"{n}_{s}" for n, kind in families if kind == "histogram" for s in ("bucket", "sum", "count")}
    used = set()
    for expr in [*dashboard_exprs(), (MONITORING / "alerts.yml").read_text()]:
        used |= set(re.findall(r"\bhelexa_\w+", expr))
    assert used and used <= names, sorted(used - names)
