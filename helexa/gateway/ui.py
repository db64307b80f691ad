"""``GET /ui``: the fleet on one server-rendered page — neurons, devices, models, live figures, scheduling,
batches, bench results.

No JavaScript framework and nothing from a CDN (fleet hosts are often offline): HTML and CSS, refreshed by the
browser every few seconds, and plain forms for the admin buttons. With authentication on, a browser signs in
once with a key (``POST /ui/login``); the page keeps a random session id in an HttpOnly, SameSite=Strict cookie
— never the key, which the page never shows either (only its name). Load and unload need a key with the admin
scope (so does cancelling a batch); their forms are refused from any other origin.
"""

from __future__ import annotations

import html
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import parse_qsl, quote

import msgspec
from aiohttp import web

from helexa.errors import HelexaError, NotFound, PermissionDenied
from helexa.gateway.admin import load_model
from helexa.gateway.batch_routes import batch_store_key, cancel, owned_batch
from helexa.gateway.batchview import batches_section
from helexa.gateway.benchview import REFRESH_S, BenchView
from helexa.gateway.catalogue import fleet_report
from helexa.gateway.metrics import GatewayMetrics
from helexa.gateway.routing import first_round
from helexa.gateway.schedview import scheduling_section
from helexa.gateway.signins import SESSION_S, SignIns
from helexa.gateway.state import gateway_metrics_key, lifecycle_key, router_key
from helexa.server.auth import TooManyFailures, presented_token
from helexa.server.body import read_body
from helexa.server.keys import Key, KeyRing
from helexa.wire.progress import describe_progress

__all__ = ["keyring_key", "make_ui_app", "rates_key"]

COOKIE = "helexa_ui"
keyring_key = web.AppKey("ui_keyring_key", KeyRing)
rates_key = web.AppKey("ui_rates_key", "RateWindow")
_sessions_key = web.AppKey("ui_sessions_key", SignIns)
_bench_key = web.AppKey("ui_bench_key", BenchView)
_notes_key = web.AppKey("ui_notes_key", dict)  # id -> what the last actions did (bounded)


@dataclass
class RateWindow:
    """The page's own samples of request counts, for the rate over the last minute; ``clock`` is injectable."""

    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic


@dataclass
class Viewer:
    """Who looks at the page: a key's name and whether it may load and unload ("" and True when auth is off)."""

    name: str
    admin: bool


def make_ui_app(ring: KeyRing, *, bench_db: str = "", sessions: SignIns | None = None) -> web.Application:
    """The ``/ui`` sub-application, with its own state (sessions, notes, rate samples, bench view); ``ring``
    decides who may see it (empty: everyone). It signs its visitors in itself (the API's key guard does not
    run on it) and reads the gateway's lifecycle and metrics from the application it is mounted on."""
    app = web.Application()
    app[keyring_key] = ring
    app[_sessions_key] = sessions if sessions is not None else SignIns()
    app[rates_key] = RateWindow()
    app[_bench_key] = BenchView(bench_db)
    app[_notes_key] = {}
    r = app.router
    r.add_get("", page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_post("/models/{model_id:.+}/{action:load|unload}", act)
    r.add_get("/models/{model_id:.+}/logs", engine_logs)
    r.add_post("/batches/{batch_id}/cancel", cancel_batch)
    return app


# ------------------------------------------------------------------------------------------------- who is it


async def _viewer(request: web.Request) -> Viewer | None:
    ring = request.app[keyring_key]
    if not ring.keys:
        return Viewer("", True)
    presented = presented_token(request, allow_x_api_key=True)  # a key sent with the request wins
    if presented:
        key = _find(request, ring, presented)
        return Viewer(key.name, "admin" in key.scopes) if key is not None else None
    sid = request.cookies.get(COOKIE, "")
    session = await request.app[_sessions_key].find(sid) if sid else None
    return Viewer(*session) if session is not None else None


def _find(request: web.Request, ring: KeyRing, presented: str) -> Key | None:
    """The key ``presented`` is, counting a wrong one against the sender's address.

    :raises TooManyFailures: the address sent too many wrong keys lately."""
    address = request.remote or ""
    ring.throttle.check(address)
    key = ring.find(presented)
    if key is None:
        ring.throttle.failed(address)
    return key


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    return origin is None or origin.split("://", 1)[-1] == request.host


async def login(request: web.Request) -> web.Response:
    """``POST /ui/login`` (form ``key``): a session cookie for a valid key, else the sign-in page again (401)."""
    form = dict(parse_qsl((await read_body(request)).decode(errors="replace")))
    ring = request.app[keyring_key]
    try:
        key = _find(request, ring, form.get("key", "")) if ring.keys else None
    except TooManyFailures as exc:
        return _sign_in(request, exc.message, status=429)
    if key is None or not _same_origin(request):
        return _sign_in(request, "That key is not valid here.")
    sid = await request.app[_sessions_key].open(key.name, "admin" in key.scopes)
    response = web.HTTPSeeOther("/ui")
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/ui", max_age=SESSION_S, secure=secure)
    raise response


async def logout(request: web.Request) -> web.Response:
    """``POST /ui/logout``: forget the session."""
    await request.app[_sessions_key].close(request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther("/ui")
    response.del_cookie(COOKIE, path="/ui")
    raise response


def _sign_in(request: web.Request, note: str = "", *, status: int = 401) -> web.Response:
    warning = f'<p class="err">{html.escape(note)}</p>' if note else ""
    body = f"""<h1>helexa</h1><p>This gateway needs a key.</p>{warning}
<form method="post" action="/ui/login"><label>API key <input type="password" name="key" autocomplete="off" required>
</label> <button type="submit">Sign in</button></form>"""
    return _html(_document("helexa — sign in", body, refresh=False), status=status)


# ------------------------------------------------------------------------------------------------------ actions


async def act(request: web.Request) -> web.Response:
    """``POST /ui/models/{id}/load|unload`` from the page's buttons (admin only, same origin only)."""
    viewer = await _viewer(request)
    if viewer is None:
        return _sign_in(request)
    if not viewer.admin or not _same_origin(request):
        raise PermissionDenied("loading and unloading need a key with the admin scope")
    lifecycle = request.config_dict[lifecycle_key]
    model_id = lifecycle.registry.resolve(request.match_info["model_id"])
    try:
        if request.match_info["action"] == "load":
            model_id, neuron = await load_model(request, model_id)
            note = f"loaded {model_id} on {neuron}"
        else:
            holders = [n.name for n in lifecycle.registry.neurons.values() if model_id in n.models]
            for name in holders:
                await lifecycle.unload(name, model_id)
            note = f"unloaded {model_id}" if holders else f"{model_id} was not loaded"
    except HelexaError as exc:
        note = f"{request.match_info['action']} {model_id} failed: {exc.message}"
    _back_with(request, note)


def _back_with(request: web.Request, note: str) -> NoReturn:
    """Back to the page, showing ``note`` (what the action did).

    :raises web.HTTPSeeOther: always."""
    notes: dict[str, str] = request.app[_notes_key]
    token = secrets.token_urlsafe(8)  # the page shows notes the server wrote, never text from a URL
    notes[token] = note[:300]
    while len(notes) > 100:
        notes.pop(next(iter(notes)))
    raise web.HTTPSeeOther("/ui?note=" + token)


async def cancel_batch(request: web.Request) -> web.Response:
    """``POST /ui/batches/{id}/cancel`` from the page's button (admin only, same origin only)."""
    viewer = await _viewer(request)
    if viewer is None:
        return _sign_in(request)
    if not viewer.admin or not _same_origin(request):
        raise PermissionDenied("cancelling a batch from the page needs a key with the admin scope")
    try:
        await cancel(request, await owned_batch(request, request.match_info["batch_id"], messages=None, anyone=True))
        note = f"cancelling {request.match_info['batch_id']}: the lines running end, no other starts"
    except HelexaError as exc:
        note = f"cancel failed: {exc.message}"
    _back_with(request, note)


async def engine_logs(request: web.Request) -> web.Response:
    """``GET /ui/models/{id}/logs``: the engine's output, for admins signed in to the page."""
    viewer = await _viewer(request)
    if viewer is None:
        return _sign_in(request)
    if not viewer.admin:
        raise PermissionDenied("engine logs need a key with the admin scope")
    lifecycle = request.config_dict[lifecycle_key]
    model_id = lifecycle.registry.resolve(request.match_info["model_id"])
    neuron = request.query.get("neuron", "")
    if neuron not in lifecycle.clients:
        raise NotFound(f"no neuron {neuron[:100]!r}", code="neuron_not_found")
    state = lifecycle.registry.neurons[neuron]
    if model_id not in state.models:
        raise NotFound(f"neuron {neuron!r} holds no model {model_id[:100]!r}", code="model_not_found")
    text = await lifecycle.clients[neuron].logs(model_id, 300)
    return web.Response(text=text, content_type="text/plain", headers=FRAME_HEADERS)


# --------------------------------------------------------------------------------------------------- the page


async def page(request: web.Request) -> web.Response:
    """``GET /ui``: the fleet, refreshed every few seconds."""
    viewer = await _viewer(request)
    if viewer is None:
        return _sign_in(request)
    lifecycle = request.config_dict[lifecycle_key]
    await first_round(lifecycle.registry)
    fleet = msgspec.to_builtins(fleet_report(lifecycle.registry, lifecycle.loading()))  # plain data, as /fleet
    figures = _figures(request.config_dict[gateway_metrics_key], request.app[rates_key])
    note = request.app[_notes_key].get(request.query.get("note", ""), "")
    who = (
        f'<form method="post" action="/ui/logout" class="who">signed in as <b>{html.escape(viewer.name)}</b> '
        f'<button type="submit">sign out</button></form>'
        if viewer.name
        else ""
    )
    body = (
        f"<header><h1>helexa fleet</h1>{who}</header>"
        + (f'<p class="note">{html.escape(note)}</p>' if note else "")
        + _neurons(fleet)
        + _models(fleet, figures, viewer)
        + scheduling_section(request.config_dict[gateway_metrics_key], request.config_dict[router_key].queue)
        + await batches_section(request.config_dict[batch_store_key], viewer.name, viewer.admin)
        + await request.app[_bench_key].section()
    )
    return _html(_document("helexa fleet", body))


def _bar(used: float, total: float) -> str:
    share = 0 if not total else min(100.0, 100 * used / total)
    return f'<div class="bar" title="{share:.0f}%"><div style="width:{share:.0f}%"></div></div>'


def _gib(mib: float) -> str:
    return f"{mib / 1024:.1f} GiB"


def _neurons(fleet: dict[str, Any]) -> str:
    rows = []
    for n in fleet["neurons"]:
        down = f'<span class="down">down</span> {html.escape(n["last_error"][:120])}'
        health = '<span class="ok">up</span>' if n["healthy"] else down
        if n["devices"]:
            devices = "".join(
                f"<div>GPU {d['index']} {html.escape(d['name'])}: {_gib(d['vram_used_mb'])} of "
                f"{_gib(d['vram_total_mb'])} {_bar(d['vram_used_mb'], d['vram_total_mb'])}</div>"
                for d in n["devices"]
            )
        else:
            host = n.get("host") or {}
            total, free = host.get("ram_total_mb", 0), host.get("ram_available_mb", 0)
            devices = (
                f"<div>CPU, {host.get('cpu_count', '?')} cores; RAM {_gib(total - free)} of {_gib(total)} "
                f"{_bar(total - free, total)}</div>"
            )
        running = ", ".join(
            html.escape(m["id"]) for m in n["models"] if m["status"] in ("loaded", "loading", "downloading", "sleeping")
        )
        rows.append(
            f'<tr class="neuron"><td>{html.escape(n["name"])}</td><td>{health}</td><td>{devices}</td>'
            f"<td>{running or '-'}</td></tr>"
        )
    return (
        "<h2>Neurons</h2><table><tr><th>neuron</th><th>health</th><th>devices</th><th>running</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _models(fleet: dict[str, Any], figures: dict[str, dict[str, str]], viewer: Viewer) -> str:
    errors = {
        m["id"]: (n["name"], m["last_error"])
        for n in fleet["neurons"]
        for m in n["models"]
        if m["status"] == "failed" and m["last_error"]
    }
    rows = []
    for card in fleet["models"]:
        model = card["id"]
        status = html.escape(card["status"])
        if card.get("download"):
            status += " " + html.escape(describe_progress(card["download"]))
            status += _bar(card["download"]["bytes_done"], card["download"]["bytes_total"])
        elif card["status"] == "unavailable":
            status += f" ({html.escape(card.get('unavailable_kind', ''))})"
        elif card["status"] == "needs_download" and card.get("download_bytes"):
            status += f" ({card['download_bytes'] / 2**30:.1f} GiB)"
        if model in errors:
            neuron, error = errors[model]
            link = f"/ui/models/{quote(model, safe='')}/logs?neuron={quote(neuron)}"
            status += f'<div class="down">failed on {html.escape(neuron)}: {html.escape(error[:200])} '
            status += f'<a href="{link}">engine log</a></div>' if viewer.admin else "</div>"
        live = figures.get(model, {})
        buttons = ""
        if viewer.admin:
            action = "unload" if card["status"] == "loaded" else "load"
            buttons = (
                f'<form method="post" action="/ui/models/{quote(model, safe="")}/{action}">'
                f'<button type="submit" name="go" value="{action}">{action}</button></form>'
            )
        where = html.escape(", ".join(card["loaded_on"])) or "-"
        if card.get("members"):  # a gang: every member with its rank and memory
            where = f"gang of {card.get('hosts', '?')}:" + "".join(
                f'<div class="member">rank {int(m["rank"])} on {html.escape(m["neuron"])}: '
                f"{html.escape(m['status'])}, {int(m['memory_mb'])} MiB</div>"
                for m in card["members"]
            )
        rows.append(
            f'<tr class="model" data-model="{html.escape(model)}"><td>{html.escape(model)}</td><td>{status}</td>'
            f"<td>{where}</td><td>{live.get('rate', '-')}</td>"
            f"<td>{live.get('ttft', '-')}</td><td>{live.get('tps', '-')}</td><td>{buttons}</td></tr>"
        )
    return (
        "<h2>Models</h2><table><tr><th>model</th><th>status</th><th>where</th><th>requests/s (1 min)</th>"
        "<th>TTFT p50</th><th>tokens/s p50</th><th></th></tr>" + "".join(rows) + "</table>"
    )


def _figures(metrics: GatewayMetrics, window: RateWindow) -> dict[str, dict[str, str]]:
    """Per model, from the gateway's own metrics: request rate over the last minute (from the page's own
    samples), and since-start medians of time to first token and tokens per second."""
    now = window.clock()
    counts: dict[str, float] = {}
    for (model, _neuron, _status), child in metrics.requests.children():
        counts[model] = counts.get(model, 0.0) + child.value
    samples = window.samples
    samples.append((now, counts))
    while len(samples) > 2 and now - samples[1][0] >= 60:
        samples.pop(0)
    then, before = samples[0]
    out: dict[str, dict[str, str]] = {}
    for model, total in counts.items():
        row = out.setdefault(model, {})
        if now - then >= 1:
            row["rate"] = f"{(total - before.get(model, 0.0)) / (now - then):.2f}"
    for name, family, unit in (("ttft", metrics.ttft, "s"), ("tps", metrics.tokens_per_second, "")):
        merged: dict[str, list[int]] = {}
        for (model, _neuron), child in family.children():
            counts_of = merged.setdefault(model, [0] * len(child.counts))
            merged[model] = [a + b for a, b in zip(counts_of, child.counts, strict=True)]
        for model, buckets in merged.items():
            median = _bucket_median(family.bounds, buckets)
            if median is not None:
                out.setdefault(model, {})[name] = f"{median:.2f}{unit}" if unit else f"{median:.1f}"
    return out


def _bucket_median(bounds: tuple[float, ...], counts: list[int]) -> float | None:
    """The median of a histogram, interpolated inside its bucket (as ``histogram_quantile`` does)."""
    total = sum(counts)
    if not total:
        return None
    running, lower = 0, 0.0
    for upper, count in zip((*bounds, bounds[-1]), counts, strict=True):
        if running + count >= total / 2 and count:
            return lower + (upper - lower) * ((total / 2 - running) / count)
        running, lower = running + count, upper
    return bounds[-1]


_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}header{display:flex;gap:2em;
align-items:baseline}table{border-collapse:collapse;margin-bottom:1.5em}td,th{border:1px solid #ddd;padding:.3em .6em;
text-align:left;vertical-align:top}.bar{display:inline-block;width:9em;height:.7em;background:#eee;
vertical-align:middle}.bar div{height:100%;background:#4a7fd4}.ok{color:#1a7f37}.down,.err{color:#c62828}
.note{background:#fff6d5;padding:.4em}form{display:inline}pre{background:#f6f6f6;padding:1em;overflow-x:auto}"""


# The page is never shown inside another site's frame (clickjacking its buttons).
FRAME_HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"}


def _html(text: str, *, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=FRAME_HEADERS)


def _document(title: str, body: str, *, refresh: bool = True) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">{meta}<title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
