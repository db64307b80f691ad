"""Debian tools some tests need (promtool, rpmlint, systemd-analyze, openssl): found, or installed with apt-get.

Installing needs root and apt-get (CI runs as root on Debian). Where that is impossible the test is skipped with
the reason printed — except under ``CI=true``, where a missing tool is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

__all__ = ["debian_tool"]

_apt = {"updated": False}


def debian_tool(command: str, package: str) -> str:
    """The path of ``command``, installing Debian ``package`` first if needed. Skips (or, in CI, fails) when
    it cannot be had."""
    found = shutil.which(command)
    if found:
        return found
    why = ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        why = f"{command} is not installed and cannot be (needs root and apt-get: apt-get install {package})"
    else:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
        if done.returncode != 0 and not _apt["updated"]:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=600, check=False)
            _apt["updated"] = True
            done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900, check=False)
        found = shutil.which(command)
        if found:
            return found
        why = f"apt-get install {package} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {command}: {why}")
    pytest.skip(why)
    raise AssertionError("unreachable")
