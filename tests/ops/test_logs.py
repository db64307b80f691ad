"""Logs people can read: a ready banner, the role on every line, one access line per request, no poll noise,
and JSON lines for journald and Loki."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

from tests.conftest import free_port, wait_http


def run_both(helexa_process, *extra: str, then=None) -> tuple[str, dict[str, int]]:
    """``helexa run --role both`` for a few polls and three client requests (and ``then(base_url)``); its whole
    log."""
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
    deadline = time.monotonic() + 15
    while True:  # until the gateway has polled its neuron (the metrics listener's requests are not logged)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as resp:
            if re.search(rb"^helexa_gateway_neuron_up\{[^}]*\} 1\.0$", resp.read(), re.M):
                break
        assert time.monotonic() < deadline, "the gateway never polled its neuron"
        time.sleep(0.05)
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
    if then is not None:
        then(base)
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


FORGED = "2026-12-02 10:00:00,000 INFO    gateway helexa.gateway: FORGED LINE"


def send_forgeries(base: str) -> None:
    """The report's probe: a path whose percent-decoded form holds CR LF and a fake log line, in the path, a
    header and a model name."""
    host, port = base.removeprefix("http://").split(":")
    forged_path = "/x%0d%0a" + urllib.parse.quote(FORGED) + "%1b[31m"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"GET {forged_path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 404")
    body = json.dumps({"model": "m\r\n" + FORGED, "messages": [{"role": "user", "content": "x"}]}).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=5)
    except urllib.error.HTTPError as exc:
        assert exc.code in (400, 404)


def test_no_one_can_forge_a_log_line(helexa_process):
    for fmt in ("text", "json"):
        log, _ = run_both(helexa_process, "--log-format", fmt, then=send_forgeries)
        assert "FORGED LINE" in log, log  # the attempt is logged ...
        for line in log.splitlines():  # ... but never as a line of its own, and no raw escape reaches the terminal
            assert not line.startswith("2026-12-02 10:00:00"), line
            assert "\x1b" not in line and "\r" not in line
            if fmt == "json":
                json.loads(line)


def test_text_formatter_escapes_messages_and_indents_tracebacks():
    import logging

    from helexa.cli.logformat import TextFormatter

    formatter = TextFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "path %s", ("/a\r\nINFO forged\u2028\x1b[0m",), None)
    assert formatter.format(record) == "INFO path /a\\r\\nINFO forged\\u2028\\x1b[0m"
    try:
        raise ValueError("bad\nINFO forged")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert lines[0] == "ERROR failed" and all(line.startswith("    ") for line in lines[1:])


def test_timestamps_are_what_logging_writes_though_each_second_is_formatted_once():
    import logging

    from helexa.cli.logformat import JsonFormatter, TextFormatter

    text, json_, plain = TextFormatter("%(asctime)s %(message)s"), JsonFormatter(), logging.Formatter("%(asctime)s")
    for created in (1796083200.0, 1796083200.999, 1796083201.5, 1796083200.25, 1796169599.001):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert text.format(record) == f"{plain.formatTime(record)} m"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{int(record.msecs):03d}Z"
        assert json.loads(json_.format(record))["ts"] == stamp
