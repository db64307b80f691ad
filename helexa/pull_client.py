"""``helexa pull``: ask a neuron to fetch a model's files, and show the download until it is done.

The neuron does the download (``POST /models/pull`` with ``wait = false``); this client polls ``GET /pulls``
and prints progress. Stopping the client (Ctrl-C) does not stop the download: the neuron finishes it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from helexa.errors import UpstreamError
from helexa.status import describe_progress

__all__ = ["pull"]

POLL_S = 1.0


def _call(url: str, token: str, method: str = "GET", body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
            message = error.get("message", "")
            if error.get("suggestion"):
                message += f" ({error['suggestion']})"
        except (ValueError, KeyError, TypeError, AttributeError):
            message = str(exc.reason)
        raise UpstreamError(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpstreamError(f"cannot reach the neuron at {url}: {getattr(exc, 'reason', exc)}") from None


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
    answer = _call(f"{base}/models/pull", token, "POST", body)
    if answer["status"] == "ready":
        return answer
    say(f"pulling {answer['source']}: {', '.join(answer.get('files', []))}")
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        jobs = [p for p in _call(f"{base}/pulls", token)["pulls"] if p["source"] == answer["source"]]
        if not jobs:
            break
        line = f"{jobs[0]['file']}: {describe_progress(jobs[0])}"
        if line != last:
            say(line)
            last = line
        time.sleep(POLL_S)
    return _call(f"{base}/models/pull", token, "POST", {**body, "wait": True}, timeout=max(60.0, POLL_S))
