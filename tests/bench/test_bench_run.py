"""``helexa bench`` against ``helexa run --role both`` with the demo model on real llama.cpp: a quick run
writes non-zero figures for every scenario, a second run skips what this build has measured, the report and
the comparison read the database, and a target that is down is a recorded failure, not a crash."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from helexa.bench.store import Build, Result, Store
from tests.conftest import engine_ports, free_port


def helexa(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELEXA_")}
    return subprocess.run(
        [sys.executable, "-m", "helexa", *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def gateway(demo_fleet):
    return demo_fleet(api_keys=["sk-bench"], admin_keys=["sk-admin"], port_range=str(engine_ports()))


def test_quick_bench_run_report_and_compare(gateway, tmp_path):
    db = tmp_path / "bench.sqlite"
    keys = ("--api-key", "sk-bench", "--admin-key", "sk-admin")
    began = time.monotonic()
    done = helexa("bench", "run", "--url", gateway, "--quick", "--db", str(db), "--repeat", "1", *keys)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stdout + done.stderr
    assert took < 120, f"--quick took {took:.0f}s"
    rows = Store(db).rows()
    by_cell = {(r["scenario"], r["concurrency"]): r for r in rows}
    cells = {("chat", 1), ("chat", 2), ("anthropic", 1), ("responses", 1), ("swap", 1), ("evict", 1)}
    assert set(by_cell) == cells, done.stdout
    assert all(r["ok"] for r in rows), [(r["scenario"], r["error"]) for r in rows]
    for key in (("chat", 1), ("chat", 2), ("anthropic", 1), ("responses", 1)):
        row = by_cell[key]
        assert row["ttft_p50"] > 0 and row["latency_p50"] >= row["ttft_p50"], row
        assert (row["tokens_per_second"] or 0) > 0, (key, row)
    assert by_cell[("swap", 1)]["swap_seconds"] > 0 and by_cell[("swap", 1)]["detail"] == "cold load"  # llama.cpp
    evict = by_cell[("evict", 1)]
    assert evict["swap_seconds"] > 0 and evict["detail"] == "unload gemma-3-270m + load smollm2-135m-instruct"
    assert rows[0]["model"] == "smollm2-135m-instruct" and rows[0]["build"].startswith("0.")
    assert re.search(r"(xllamacpp|llama-server) \S+", rows[0]["engine"]), rows[0]["engine"]  # engine + version
    request = urllib.request.Request(f"{gateway}/v1/models", headers={"x-api-key": "sk-bench"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        cards = {m["id"]: m for m in json.load(resp)["data"]}
    assert cards["gemma-3-270m"]["quant"] == "Q4_K_M" and rows[0]["quant"] == cards[rows[0]["model"]]["quant"]

    again = helexa("bench", "run", "--url", gateway, "--quick", "--db", str(db), "--repeat", "1", *keys)
    assert again.returncode == 0 and "0 cell(s) measured" in again.stdout and "skipped" in again.stdout

    html = tmp_path / "report.html"
    report = helexa("bench", "report", "--db", str(db), "--html", str(html))
    assert report.returncode == 0 and "smollm2-135m-instruct" in report.stdout and "knee" in report.stdout
    page = html.read_text()
    assert page.count("<svg") >= 2 and "<script" not in page and "src=" not in page  # self-contained

    store = Store(db)  # a second build, a little slower, to compare with
    build = rows[0]["build"]
    run = store.start_run(Build(target=gateway, helexa_version="9.9.9", git_sha="feedface"))
    for row in rows:
        slower = {k: (v * 1.1 if isinstance(v, float) else v) for k, v in row.items() if k in Result.__annotations__}
        store.add(run, Result(**slower))
    compared = helexa("bench", "compare", build, "9.9.9+feedface", "--db", str(db))
    assert compared.returncode == 0 and "+10.0%" in compared.stdout, compared.stdout


def test_a_neuron_as_the_target(gateway, demo_fleet, tmp_path):
    db = tmp_path / "bench.sqlite"
    token = demo_fleet.neuron_token.read_text().strip()
    args = ("--url", demo_fleet.neuron_url, "--quick", "--db", str(db), "--repeat", "1")
    done = helexa("bench", "run", *args, "--api-key", token, "--admin-key", token)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = Store(db).rows()
    by_cell = {(r["scenario"], r["concurrency"]): r for r in rows}
    assert set(by_cell) == {("chat", 1), ("chat", 2), ("swap", 1), ("evict", 1)}, done.stdout  # OpenAI only
    assert all(r["ok"] for r in rows), [(r["scenario"], r["error"]) for r in rows]
    assert by_cell[("swap", 1)]["detail"] == "cold load"


def test_a_target_that_is_down_is_a_recorded_failure(tmp_path):
    db = tmp_path / "bench.sqlite"
    done = helexa("bench", "run", "--url", f"http://127.0.0.1:{free_port()}", "--quick", "--db", str(db))
    assert done.returncode == 0 and "did not answer" in done.stdout
    (row,) = Store(db).rows()
    assert not row["ok"] and "Connect" in row["error"]
