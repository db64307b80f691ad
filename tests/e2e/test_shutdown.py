"""SIGTERM with streams in flight: ``helexa run --role both`` ends them with the final error event of their API
when the grace period is over, and exits within grace + 2 s (real processes, a slow scripted engine)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request

from tests.conftest import ROOT, free_port, wait_http

GRACE_S = 1.0


def test_sigterm_ends_running_streams_with_an_error_event_within_grace(helexa_process, tmp_path):
    engine_port, gateway_port, metrics_port, neuron_port = (free_port() for _ in range(4))
    argv = [sys.executable, str(ROOT / "tests/fakes/fake_engine.py"), "--port", str(engine_port), "--model", "m"]
    engine = subprocess.Popen(
        [*argv, "--reply", "word " * 400, "--chunk-size", "5", "--chunk-delay", "0.05"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{engine_port}/health")
        config = tmp_path / "helexa.toml"
        config.write_text(
            f'[server]\nshutdown_grace_seconds = {GRACE_S}\n[gateway]\nlisten = "127.0.0.1:{gateway_port}"\n'
            f'metrics_listen = "127.0.0.1:{metrics_port}"\n[neuron]\nlisten = "127.0.0.1:{neuron_port}"\n'
            f'model_dirs = ["{tmp_path}"]\npreload = ["m"]\n[[models]]\nid = "m"\nharness = "external"\n'
            f'source = "http://127.0.0.1:{engine_port}/v1"\n'
        )
        proc = helexa_process("run", "--role", "both", "--config", str(config))
        base = f"http://127.0.0.1:{gateway_port}"
        wait_http(f"{base}/healthz", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as resp:
                if b'"loaded"' in resp.read():
                    break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        texts: dict[str, str] = {}
        streaming = threading.Semaphore(0)

        def stream(path: str, body: bytes) -> None:
            request = urllib.request.Request(base + path, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as resp:
                first = resp.read(1)  # the stream has begun
                streaming.release()
                texts[path] = (first + resp.read()).decode()

        chat = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
        anthropic = (
            b'{"model": "m", "stream": true, "max_tokens": 999, "messages": [{"role": "user", "content": "hi"}]}'
        )
        threads = [
            threading.Thread(target=stream, args=("/v1/chat/completions", chat)),
            threading.Thread(target=stream, args=("/v1/messages", anthropic)),
        ]
        for thread in threads:
            thread.start()
        for _ in threads:  # both streams are running (the engine needs ~4 s for its answer)
            assert streaming.acquire(timeout=10)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        took = time.monotonic() - began
        for thread in threads:
            thread.join(timeout=10)
        assert took < GRACE_S + 2.0, took
        chat_last = texts["/v1/chat/completions"].strip().split("\n\n")[-1]
        assert chat_last.startswith("data: {") and "shutting down" in chat_last
        anthropic_last = texts["/v1/messages"].strip().split("\n\n")[-1]
        assert anthropic_last.startswith("event: error") and "overloaded_error" in anthropic_last
    finally:
        engine.kill()
        engine.wait(timeout=10)
