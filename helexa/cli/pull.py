"""``helexa pull``: ask a neuron to fetch a model's files, and show the download until it is done.

The neuron does the download (``POST /models/pull`` with ``wait = false``); this client polls ``GET /pulls``
and prints progress. Stopping the client (Ctrl-C) does not stop the download: the neuron finishes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from helexa.cli.status import call
from helexa.wire.progress import describe_progress

__all__ = ["pull"]

POLL_S = 1.0


def _call(base: str, path: str, token: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    method = "GET" if body is None else "POST"
    return json.loads(call(method, base, path, token, body=body, timeout=timeout, target="the neuron"))


def pull(
    neuron: str,
    token: str,
    source: str,
    *,
    quant: str = "",
    harness: str = "",
    say: Callable[[str], None] = print,
    timeout_s: float = 24 * 3600,
) -> dict[str, Any]:
    """Fetch ``source`` onto the neuron at ``neuron``; report progress through ``say``; return the final
    answer (``status: ready``, ``path``, ``files``).

    :raises UpstreamError: the neuron refused (its message and suggestion) or cannot be reached.
    """
    base = neuron.rstrip("/")
    body = {"source": source, "quant": quant, "harness": harness, "wait": False}
    answer = _call(base, "/models/pull", token, body)
    if answer["status"] == "ready":
        return answer
    say(f"pulling {answer['source']}: {', '.join(answer.get('files', []))}")
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        jobs = [p for p in _call(base, "/pulls", token)["pulls"] if p["source"] == answer["source"]]
        if not jobs:
            break
        line = f"{jobs[0]['file']}: {describe_progress(jobs[0])}"
        if line != last:
            say(line)
            last = line
        time.sleep(POLL_S)
    return _call(base, "/models/pull", token, {**body, "wait": True}, timeout=timeout_s)
