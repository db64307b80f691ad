"""``helexa status`` and ``helexa models``: tables of a running gateway's fleet, or its JSON."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from helexa.errors import UpstreamError
from helexa.wire.progress import describe_progress, size_text

__all__ = ["batches_table", "call", "describe_status", "fetch", "fetch_text", "models_table", "status_table"]


def fetch(url: str, path: str, api_key: str = "", timeout: float = 10.0) -> Any:
    """GET ``url + path`` as JSON. :raises UpstreamError: unreachable, or an error status (its message)."""
    return json.loads(fetch_text(url, path, api_key, timeout))


def fetch_text(url: str, path: str, api_key: str = "", timeout: float = 10.0) -> str:
    """GET ``url + path`` as text. :raises UpstreamError: unreachable, or an error status (its message)."""
    return call("GET", url, path, api_key, timeout=timeout)


def call(
    method: str,
    url: str,
    path: str,
    token: str = "",
    *,
    body: Any = None,
    timeout: float = 10.0,
    target: str = "the gateway",
) -> str:
    """One request to a helexa daemon (JSON body when given, bearer ``token``); the answer as text.

    :raises UpstreamError: ``target`` unreachable, or an error status: its message (and suggestion, if any).
    """
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url.rstrip("/") + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc)["error"]
            message = str(error["message"]) + (f" ({error['suggestion']})" if error.get("suggestion") else "")
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise UpstreamError(f"{url}{path}: {exc.code} {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UpstreamError(f"cannot reach {target} at {url}: {getattr(exc, 'reason', exc)}") from None


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


_COUNTED = ("loaded", "loading", "downloading", "sleeping")  # models that occupy, or will occupy, the host


def status_table(fleet: dict[str, Any]) -> str:
    """Neurons (health, devices, memory used/total: VRAM on GPU hosts, RAM on CPU hosts; models running or
    starting) and models (status, where, in flight; a gang's members beneath it: rank, status, neuron,
    memory)."""
    rows = [["NEURON", "HEALTH", "DEVICES", "MEMORY USED/TOTAL", "MODELS", "ERROR"]]
    for n in fleet["neurons"]:
        if n["devices"]:
            devices = f"{len(n['devices'])} GPU"
            used = sum(d["vram_used_mb"] for d in n["devices"]) * 2**20
            total = sum(d["vram_total_mb"] for d in n["devices"]) * 2**20
        else:
            host = n.get("host") or {}
            devices = f"CPU ({host.get('cpu_count', '?')} cores)"
            total = host.get("ram_total_mb", 0) * 2**20
            used = total - host.get("ram_available_mb", 0) * 2**20
        memory = f"{size_text(used)} / {size_text(total)}" if total else "-"
        running = sum(1 for m in n["models"] if m["status"] in _COUNTED)
        rows.append([n["name"], "up" if n["healthy"] else "DOWN", devices, memory, str(running), n["last_error"][:60]])
    in_flight = {(m["id"], n["name"]): m["in_flight"] for n in fleet["neurons"] for m in n["models"]}
    mrows = [["MODEL", "STATUS", "WHERE", "IN FLIGHT"]]
    for m in fleet["models"]:
        where = ",".join(m["loaded_on"]) or "-"
        busy = sum(in_flight.get((m["id"], n), 0) for n in m["loaded_on"])
        mrows.append([m["id"], describe_status(m), where, str(busy)])
        for member in m.get("members", []):  # a gang (one model over several neurons): one line per rank
            memory = size_text(member["memory_mb"] * 2**20) if member.get("memory_mb") else "?"
            role = "head" if member["rank"] == 0 else "follower"
            where = member["neuron"] + ("" if member.get("healthy", True) else " (DOWN)")
            mrows.append([f"  rank {member['rank']} ({role})", member["status"], where, memory])
    return _table(rows) + "\n\n" + _table(mrows)


def describe_status(card: dict[str, Any]) -> str:
    """A model card's status with what it implies: progress, download size, or why it cannot run."""
    status = card.get("status", "")
    if status == "downloading" and card.get("download"):
        return f"downloading {describe_progress(card['download'])}"
    if status in ("needs_download", "download"):  # "download": what 0.1.0 gateways say
        return f"needs a {size_text(card.get('download_bytes', 0))} download" if card.get("download_bytes") else status
    if status == "unavailable":
        return f"unavailable ({card.get('unavailable_kind', '?')})"
    return status


def models_table(models: dict[str, Any]) -> str:
    """The merged model list."""
    rows = [["MODEL", "STATUS", "WHERE", "ALIASES"]]
    for m in models["data"]:
        rows.append(
            [m["id"], describe_status(m), ",".join(m.get("loaded_on", [])) or "-", ",".join(m.get("aliases", []))]
        )
    return _table(rows)


def batches_table(batches: dict[str, Any]) -> str:
    """Batches, newest first: id, owner (key), model, endpoint, status, lines done/failed/total, created (UTC)."""
    import time  # noqa: PLC0415

    rows = [["BATCH", "KEY", "MODEL", "ENDPOINT", "STATUS", "DONE", "FAILED", "TOTAL", "CREATED (UTC)"]]
    for b in batches["data"]:
        counts = b.get("request_counts") or {}
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(b["created_at"]))
        rows.append(
            [
                b["id"],
                b.get("owner") or "-",
                b.get("model") or "-",
                b.get("endpoint") or "-",
                b["status"],
                str(counts.get("completed", 0)),
                str(counts.get("failed", 0)),
                str(counts.get("total", 0)),
                created,
            ]
        )
    more = "\n(more: --after " + batches["last_id"] + ")" if batches.get("has_more") else ""
    return _table(rows) + more
