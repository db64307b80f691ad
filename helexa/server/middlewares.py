"""Middlewares and signals every helexa app uses: request ids, the error envelope, the origin marker.

Error envelopes: OpenAI's ``{"error": {"message", "type", "param", "code"}}`` everywhere, except on the
Anthropic routes (``/v1/messages…``), which get ``{"type": "error", "error": {"type", "message"}}``. Every
response helexa makes carries ``x-helexa-origin: <role>`` (proxies set ``engine`` or pass a neuron's value
through) and ``x-request-id``. If an error happens after a server-sent-event stream has started, the client
gets one final error event and the stream ends; a non-SSE stream is aborted so it cannot look complete.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from helexa.errors import (
    ContextLengthExceeded,
    HelexaError,
    InvalidRequest,
    anthropic_type_for_status,
    openai_type_for_status,
)

__all__ = [
    "INPUT_ERRORS",
    "ORIGIN_HEADER",
    "POLLER_AGENT_PREFIX",
    "REQUEST_ID_HEADER",
    "AccessLogger",
    "Guard",
    "active_key",
    "end_requests",
    "error_body",
    "guard_middleware",
    "input_error",
    "quiet_access_key",
    "request_id_key",
    "request_middleware",
    "response_marker",
    "role_key",
    "sse_error_event",
    "sse_error_key",
]

logger = logging.getLogger(__name__)

ORIGIN_HEADER = "x-helexa-origin"
POLLER_AGENT_PREFIX = "helexa-gateway"  # the User-Agent of a gateway's requests to its neurons
REQUEST_ID_HEADER = "x-request-id"
role_key = web.AppKey("role_key", str)
request_id_key = web.RequestKey("request_id_key", str)
error_code_key = web.RequestKey("error_code_key", str)  # the code of the error a request was answered with
_stream_key = web.RequestKey("_stream_key", web.StreamResponse)
# Requests being handled, per app: the drain waits for them, then ends what is left (see end_requests).
active_key = web.AppKey("active_key", dict)  # id(request) -> request (requests are not hashable)
# A route whose stream speaks another dialect sets how a late error is encoded there (err -> event bytes).
sse_error_key = web.RequestKey("sse_error_key", Callable[[HelexaError], bytes])

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Request ids: unique, cheap, and not guessable across processes (a random prefix, then a counter).
_ID_PREFIX = secrets.token_hex(3)
_ids = itertools.count()
_encoder = msgspec.json.Encoder()

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_anthropic(request: web.Request) -> bool:
    return request.path.startswith("/v1/messages")


# Client input that breaks a decoder deep down: a body in a broken Content-Encoding, JSON nested past the
# interpreter's recursion limit, bytes that are not UTF-8 where text is required. Always the client's: 400.
INPUT_ERRORS = (HttpProcessingError, RequestPayloadError, RecursionError, UnicodeDecodeError)
MAX_MESSAGE_CHARS = 1000  # an error message quoting the client (a 5 MB model name) is cut to this


def input_error(exc: BaseException) -> HelexaError:
    """The 400 for one of :data:`INPUT_ERRORS` (what the client sent broke a decoder)."""
    if isinstance(exc, RecursionError):
        return InvalidRequest("request body is nested too deeply; flatten the JSON")
    if isinstance(exc, UnicodeDecodeError):
        return InvalidRequest("request body is not valid UTF-8")
    return InvalidRequest(f"request body could not be read: {str(exc).strip() or type(exc).__name__}")


def _message(err: HelexaError) -> str:
    message = err.message
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "… (cut)"


def error_body(err: HelexaError, *, anthropic: bool = False) -> bytes:
    """Encode ``err`` in the OpenAI envelope, or Anthropic's when ``anthropic`` is true."""
    if anthropic:
        message = err.anthropic_message if isinstance(err, ContextLengthExceeded) else _message(err)
        return _encoder.encode(
            {"type": "error", "error": {"type": anthropic_type_for_status(err.status), "message": message}}
        )
    body = {"message": _message(err), "type": err.type, "param": err.param, "code": err.code, **err.extra}
    return _encoder.encode({"error": body})


def sse_error_event(err: HelexaError, *, anthropic: bool = False) -> bytes:
    """The final server-sent event that reports ``err`` on a stream that already started."""
    prefix = b"event: error\n" if anthropic else b""
    return prefix + b"data: " + error_body(err, anthropic=anthropic) + b"\n\n"


def _from_http_exception(exc: web.HTTPException) -> HelexaError:
    status = exc.status
    if status == 404:
        message = "no such route; the OpenAI API is under /v1 (GET /v1/models lists the models)"
    elif status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method not allowed here; allowed: {allowed}" if allowed else "method not allowed here"
    elif status == 413:
        message = f"request body too large: {exc.text}; send a smaller request or raise server.max_body_mb"
    else:
        message = exc.text or exc.reason
    err = HelexaError(message, code=openai_type_for_status(status).removesuffix("_error"), status_override=status)
    err.headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    return err


async def _final_event(request: web.Request, stream: web.StreamResponse, err: HelexaError) -> None:
    """End an open event stream with ``err`` as its API's final error event (the route's own encoding when it
    set one: ``sse_error_key``)."""
    encode = request.get(sse_error_key)
    await stream.write(encode(err) if encode is not None else sse_error_event(err, anthropic=_is_anthropic(request)))
    await stream.write_eof()


async def _render(request: web.Request, err: HelexaError) -> web.StreamResponse:
    request[error_code_key] = err.code
    anthropic = _is_anthropic(request)
    stream: web.StreamResponse | None = request.get(_stream_key)
    if stream is not None and stream.prepared:
        if stream.content_type != "text/event-stream":
            raise ConnectionAbortedError("error after a non-SSE stream started")  # aiohttp drops the connection
        try:
            await _final_event(request, stream, err)
        except ConnectionError:
            logger.debug("client went away before the error event could be written")
        return stream
    return web.Response(
        status=err.status,
        body=error_body(err, anthropic=anthropic),
        content_type="application/json",
        headers=err.headers,
    )


async def end_requests(app: web.Application, err: HelexaError) -> int:
    """End every request ``app`` is still handling: an open event stream gets the final error event of its
    API (then its end), and every handler is cancelled. Returns how many there were (the drain's last step)."""
    requests = list((app.get(active_key) or {}).values())
    for request in requests:
        stream = request.get(_stream_key)
        if stream is not None and stream.prepared and stream.content_type == "text/event-stream":
            try:
                await _final_event(request, stream, err)
            except (ConnectionError, RuntimeError):
                logger.debug("a stream closed before its final event")
        request.task.cancel()
    return len(requests)


Observer = Callable[[str, str, int, float, str], None]  # (route pattern, method, status, seconds, error code)


Release = Callable[[], None]


class Guard(Protocol):
    """A check every request passes before its handler (browser checks, credentials, limits).

    ``enter`` raises a :class:`HelexaError` to refuse the request, or returns a callable to run when the
    request is done (releasing a concurrency slot, counting usage), or ``None`` — or, when it must ask someone
    first (a shared store), an awaitable of one of those, which the middleware awaits before the next guard.
    """

    def enter(self, request: web.Request) -> Release | Awaitable[Release | None] | None:
        """Admit ``request`` or raise."""
        ...


def _admit(guards: tuple[Guard, ...], request: web.Request, done: list[Release]) -> Awaitable[None] | None:
    """Run ``guards`` in order; the callables they return go to ``done``. Synchronous while every guard is (the
    hot path: no coroutine); from the first that returns an awaitable on, the rest run in the returned one."""
    for i, guard in enumerate(guards):
        release = guard.enter(request)
        if release is None:
            continue
        if callable(release):
            done.append(release)
            continue
        return _admit_later(release, guards[i + 1 :], request, done)
    return None


async def _admit_later(
    pending: Awaitable[Release | None], rest: tuple[Guard, ...], request: web.Request, done: list[Release]
) -> None:
    release = await pending
    if release is not None:
        done.append(release)
    more = _admit(rest, request, done)
    if more is not None:
        await more


def guard_middleware(guards: Sequence[Guard]) -> Callable[..., object]:
    """A sub-application's own guards (the root app's :func:`request_middleware` runs first and renders
    what they raise); what they return runs when the request is done."""
    guards = tuple(guards)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        done: list[Release] = []
        try:
            if (pending := _admit(guards, request, done)) is not None:
                await pending
            return await handler(request)
        finally:
            for release in done:
                release()

    return middleware


def request_middleware(
    *,
    max_body_bytes: int,
    body_limits: Mapping[str, int] | None = None,
    observe: Observer | None = None,
    guards: Sequence[Guard] = (),
    active: dict[int, web.Request] | None = None,
) -> Callable[..., object]:
    """The one middleware every helexa app runs first.

    It assigns the request id, refuses bodies over ``max_body_bytes`` by their Content-Length (chunked
    bodies are limited while read; ``body_limits``: another limit for a path, an upload's), runs the app's
    ``guards`` in order, turns every exception into the right error envelope, and reports each request to
    ``observe`` (route pattern, method, status, seconds). One layer instead of one per concern keeps the
    proxy's per-request cost down. ``active``: the app's requests being handled (its ``active_key``),
    sub-applications' requests included.
    """
    guards = tuple(guards)
    active = active if active is not None else {}
    limits = dict(body_limits or {})

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request.headers.get(REQUEST_ID_HEADER, "")
        request[request_id_key] = rid if rid and _CLIENT_REQUEST_ID.match(rid) else f"{_ID_PREFIX}{next(_ids):010x}"
        status, response = 500, None
        done: list[Release] = []
        active[id(request)] = request
        try:
            _check_length(request, limits.get(request.path, max_body_bytes) if limits else max_body_bytes)
            if (pending := _admit(guards, request, done)) is not None:
                await pending
            response = await handler(request)
        except HelexaError as err:
            if err.status >= 500:
                logger.warning("%s %s -> %d %s: %s", request.method, request.path, err.status, err.code, err.message)
            response = await _render(request, err)
        except web.HTTPException as exc:
            if exc.status < 400:
                status = exc.status
                raise
            response = await _render(request, _from_http_exception(exc))
        except INPUT_ERRORS as exc:  # raised while reading or decoding what the client sent
            response = await _render(request, input_error(exc))
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code for it)
            raise
        except ConnectionAbortedError:
            raise
        except Exception:
            rid = request[request_id_key]
            logger.exception("unhandled error in %s %s (request id %s)", request.method, request.path, rid)
            err = HelexaError(f"internal error; the helexa log has the details under request id {rid}")
            response = await _render(request, err)
        finally:
            active.pop(id(request), None)
            for release in done:
                release()
            if observe is not None:
                _report(observe, request, response.status if response is not None else status, started)
        return response

    return middleware


def _check_length(request: web.Request, max_body_bytes: int) -> None:
    """:raises HTTPRequestEntityTooLarge: the body's declared length is over the limit (chunked bodies are
    limited while read)."""
    length = request.content_length
    if length is not None and length > max_body_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_body_bytes, actual_size=length)


def _report(observe: Observer, request: web.Request, status: int, started: float) -> None:
    """Tell ``observe`` how ``request`` went: its route's pattern, method, status, seconds and error code."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    observe(route, request.method, status, time.perf_counter() - started, request.get(error_code_key, ""))


def response_marker(role: str) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """The ``on_response_prepare`` signal of an app of ``role`` (its sub-applications' responses included)."""

    async def on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
        """Mark every response with its origin and request id (and ``nosniff``: no browser reads an answer as
        another type than it says), and remember streams for late errors."""
        headers = response.headers
        headers.setdefault(ORIGIN_HEADER, role)
        headers["X-Content-Type-Options"] = "nosniff"
        rid = request.get(request_id_key)
        if rid:
            headers.setdefault(REQUEST_ID_HEADER, rid)
        if not isinstance(response, web.Response):
            request[_stream_key] = response

    return on_response_prepare


quiet_access_key = web.AppKey("quiet_access_key", bool)  # this app's access lines at DEBUG (--role both's neuron)
_QUIET_PATHS = frozenset({"/healthz", "/metrics", "/health", "/discovery", "/models", "/pulls"})


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path, status, duration and request id (never bodies or prompts).

    At DEBUG rather than INFO: liveness and metrics scrapes, a gateway's own polls of its neurons (GETs sent with
    its ``User-Agent``), and every request of an app marked quiet (the neuron inside ``--role both``, whose
    requests the gateway already logged).
    """

    @property
    def enabled(self) -> bool:
        """Only when the line would be written (aiohttp skips the call otherwise: it runs on every request)."""
        return self.logger.isEnabledFor(logging.INFO)  # DEBUG enabled implies INFO enabled

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """Write the access line for one finished request."""
        app = _root(request)
        level = logging.DEBUG if _routine(request, app) else logging.INFO
        if not self.logger.isEnabledFor(level):
            return
        rid = request.get(request_id_key, "-")
        self.logger.log(
            level,
            '%s "%s %s" %d %.1fms rid=%s',
            request.remote,
            request.method,
            request.path,
            response.status,
            time * 1000,
            rid,
            extra={
                "role": app[role_key] if app is not None and role_key in app else "-",
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_ms": round(time * 1000, 1),
                "request_id": rid,
                "remote": request.remote,
            },
        )


def _root(request: web.BaseRequest) -> web.Application | None:
    """The application that received ``request`` (the root one, for a sub-application's route)."""
    if not isinstance(request, web.Request):
        return None
    apps = request.match_info.apps
    return apps[0] if apps else request.app


def _routine(request: web.BaseRequest, app: web.Application | None) -> bool:
    """Requests whose access lines are noise at INFO: probes, scrapes, a gateway's polls, a quiet app's."""
    if request.path in ("/healthz", "/metrics") or (app is not None and app.get(quiet_access_key, False)):
        return True
    polled = request.method == "GET" and request.headers.get("User-Agent", "").startswith(POLLER_AGENT_PREFIX)
    return polled and request.path in _QUIET_PATHS
