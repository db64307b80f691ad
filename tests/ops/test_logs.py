"""Logs people can read: a ready banner, the role on every line, one access line per request, no poll noise,
and JSON lines for journald and Loki."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request

from tests.conftest import free_port, wait_http


def run_both(helexa_process, *extra: str) -> tuple[str, dict[str, int]]:
    """``helexa run --role both`` for a few polls and three client requests; its whole log."""
    ports = {"gateway": free_port(), "metrics": free_port(), "neuron": free_port()}
    env = {
        **os.environ,
        "HELEXA_GATEWAY__LISTEN": f"127.0.0.1:{ports['gateway']}",
        "HELEXA_GATEWAY__METRICS_LISTEN": f"127.0.0.1:{ports['metrics']}",
        "HELEXA_GATEWAY__POLL_INTERVAL_SECONDS": "0.2",
        "HELEXA_NEURON__LISTEN": f"127.0.0.1:{ports['neuron']}",
        "HELEXA_NEURON__DEMO": "false",
    }
    proc = helexa_process("run", "--role", "both", *extra, env=env)
    base = f"http://127.0.0.1:{ports['gateway']}"
    wait_http(f"{base}/healthz", timeout=30)
    time.sleep(1.0)  # a few polls
    urllib.request.urlopen(f"{base}/v1/models", timeout=5).close()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps({"model": "nope", "messages": []}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code == 404
    urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    return helexa_process.output(proc), ports


def test_text_lines_say_their_role_and_skip_the_noise(helexa_process):
    log, ports = run_both(helexa_process)
    lines = log.splitlines()
    assert any(f"gateway ready: OpenAI API http://127.0.0.1:{ports['gateway']}/v1" in line for line in lines), log
    assert any(f"metrics: http://127.0.0.1:{ports['metrics']}/metrics" in line for line in lines)
    assert any(" neuron " in line and "neuron ready:" in line for line in lines)
    for line in lines:
        level, role = line.split()[2:4]
        assert level in ("INFO", "WARNING", "ERROR", "DEBUG") and role in ("gateway", "neuron", "both"), line
    access = [line for line in lines if "aiohttp.access" in line]
    assert [line.split('"')[1] for line in access] == ["GET /v1/models", "POST /v1/chat/completions"], access
    assert all(line.split()[3] == "gateway" for line in access)
    polls = [line for line in lines if '"GET /health' in line or '"GET /models' in line]
    assert not polls, polls  # the gateway's polls: DEBUG


def test_json_lines(helexa_process):
    log, _ = run_both(helexa_process, "--log-format", "json")
    entries = [json.loads(line) for line in log.splitlines()]  # every line is JSON
    assert all({"ts", "level", "role", "logger", "message"} <= set(e) for e in entries)
    access = [e for e in entries if e["logger"] == "aiohttp.access"]
    assert [(e["method"], e["path"], e["status"], e["role"]) for e in access] == [
        ("GET", "/v1/models", 200, "gateway"),
        ("POST", "/v1/chat/completions", 404, "gateway"),
    ]
    assert all(e["request_id"] and e["duration_ms"] >= 0 for e in access)
    assert any(e["message"].startswith("gateway ready") for e in entries)
