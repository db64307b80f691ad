"""The soak benchmark's short version: 4,000 mixed requests through ``helexa run --role both``; no 5xx, and
RSS and file descriptors grow by at most 5 % after the warm-up (the full run: ``python bench/soak.py``)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_a_short_soak_neither_fails_nor_grows():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "4000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: growth within 5.0%" in done.stdout and "statuses" in done.stdout
