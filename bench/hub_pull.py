"""Pulling from a hub: helexa's pull against ``huggingface_hub.hf_hub_download`` alone, and preflight latency.

    python bench/hub_pull.py [--size-mb 512] [--rounds 3]

Starts a fake hub (``tests/fakes/fake_hub.py``, loopback, no rate limit) serving one GGUF-named file of
``--size-mb`` MiB and a neuron (``helexa run --role neuron``) with ``HF_ENDPOINT`` pointing at it. Each round,
alternating the order, downloads the file into an empty cache twice: with ``hf_hub_download`` in this process
(the floor) and through the neuron's ``POST /models/pull`` (listing, preflight, download, SHA-256 check, cache
placement). Prints MiB/s of each and the ratio (target >= 0.95). Then times ``POST /models/pull`` of a quant
that does not exist — a refusal from the listing alone — and prints its median (target <= 50 ms).
Servers bind 127.0.0.1 on free ports and are stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from loopback import free_port

ROOT = Path(__file__).resolve().parent.parent
REPO, FILE = "bench/pull-GGUF", "pull-Q4_K_M.gguf"


def wait(url: str, token: str = "", timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
            urllib.request.urlopen(request, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(url)


def post(url: str, token: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def floor_pull(endpoint: str, cache: Path) -> None:
    os.environ["HF_ENDPOINT"] = endpoint
    from huggingface_hub import constants, hf_hub_download

    constants.ENDPOINT = endpoint
    constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    hf_hub_download(REPO, FILE, cache_dir=cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--preflights", type=int, default=50)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="helexa-bench-pull-"))
    weights = work / FILE
    with weights.open("wb") as fh:
        block = os.urandom(1 << 20)
        for i in range(args.size_mb):
            fh.write(block[i % 256 :] + block[: i % 256])
    hub_port, neuron_port = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{hub_port}"
    neuron_cache = work / "neuron-cache"
    config = work / "neuron.toml"
    config.write_text(
        f'[server]\nlog_level = "warning"\n[neuron]\nlisten = "127.0.0.1:{neuron_port}"\n'
        f'token = "bench-token"\nhf_cache_dir = "{neuron_cache}"\nmodel_dirs = ["{work}"]\ndemo = false\n'
    )
    env = {**os.environ, "HF_ENDPOINT": endpoint}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    hub_cmd = [sys.executable, str(ROOT / "tests/fakes/fake_hub.py"), "--port", str(hub_port)]
    hub = subprocess.Popen([*hub_cmd, "--file", f"{REPO}={FILE}:{weights}"], **quiet)
    neuron = subprocess.Popen(
        [sys.executable, "-m", "helexa", "run", "--role", "neuron", "--config", str(config)], env=env, **quiet
    )
    base = f"http://127.0.0.1:{neuron_port}"
    pull = {"source": f"hf:{REPO}", "quant": "Q4_K_M", "harness": "llamacpp"}
    floor_s, helexa_s = [], []
    try:
        wait(f"{endpoint}/api/models/{REPO}")
        wait(f"{base}/healthz")
        for round_ in range(args.rounds):
            for which in ("floor", "helexa") if round_ % 2 == 0 else ("helexa", "floor"):
                shutil.rmtree(neuron_cache, ignore_errors=True)
                shutil.rmtree(work / "floor-cache", ignore_errors=True)
                began = time.perf_counter()
                if which == "floor":
                    floor_pull(endpoint, work / "floor-cache")
                    floor_s.append(time.perf_counter() - began)
                else:
                    status, body = post(f"{base}/models/pull", "bench-token", pull)
                    assert status == 200, body
                    helexa_s.append(time.perf_counter() - began)
        refusals = []
        for _ in range(args.preflights):
            began = time.perf_counter()
            status, body = post(f"{base}/models/pull", "bench-token", {**pull, "quant": "Q5_K_S"})
            refusals.append(time.perf_counter() - began)
            assert status == 422 and body["error"]["kind"] == "quant_not_found", body
    finally:
        for proc in (neuron, hub):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)
    floor_rate = args.size_mb / statistics.median(floor_s)
    helexa_rate = args.size_mb / statistics.median(helexa_s)
    print(f"hub pull benchmark: {args.size_mb} MiB file, medians of {args.rounds} alternating rounds, loopback")
    print(f"{'path':<34}{'MiB/s':>10}")
    print(f"{'hf_hub_download alone (floor)':<34}{floor_rate:>10.0f}")
    print(f"{'helexa POST /models/pull':<34}{helexa_rate:>10.0f}")
    print(f"ratio helexa/floor: {helexa_rate / floor_rate:.2f} (target >= 0.95)")
    refusal_ms = statistics.median(refusals) * 1000
    print(f"preflight refusal from the listing (wrong quant), median of {args.preflights}: {refusal_ms:.1f} ms")
    print("target <= 50 ms")


if __name__ == "__main__":
    main()
