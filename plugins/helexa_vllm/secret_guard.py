"""An ASGI middleware vLLM loads (``--middleware helexa_vllm.secret_guard.RequireSecret``): every route needs the
engine's secret.

vLLM's own ``--api-key`` (``VLLM_API_KEY``) guards only paths under ``/v1``, ``/v2``, ``/inference`` and
``/cohere``; ``/tokenize``, ``/pooling``, ``/score``, ``/rerank``, ``/invocations`` (a whole generation),
``/metrics`` and — in development mode, which sleep mode needs — ``/collective_rpc`` and ``/sleep`` answer anyone
who reaches the port, a web page included. This guard refuses every request but ``GET /health`` that does not
carry ``Authorization: Bearer $VLLM_API_KEY`` (compared in constant time); without the variable it refuses them
all. It imports nothing from helexa: it runs inside vLLM's API server process.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["RequireSecret"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REFUSAL = b'{"error": {"message": "this engine answers only its neuron", "type": "authentication_error", "code": 401}}'


class RequireSecret:
    """Wraps vLLM's ASGI app: HTTP and websocket requests need the secret (``GET /health`` excepted)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        secret = os.environ.get("VLLM_API_KEY", "")
        self._expected = hashlib.sha256(f"Bearer {secret}".encode()).digest() if secret else b""

    def _allowed(self, scope: Scope) -> bool:
        if scope.get("path") == "/health" and scope.get("method") in ("GET", "HEAD"):
            return True
        if not self._expected:
            return False
        given = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_REFUSAL)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": _REFUSAL})
