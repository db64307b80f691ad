"""Calls from the gateway to one neuron's control API, typed with the shared wire structs."""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import msgspec

from helexa.config import NeuronRef
from helexa.errors import ContextLengthExceeded, HelexaError, PreflightError, UpstreamError
from helexa.server.h1client import MAX_BODY_BYTES
from helexa.server.upstream import read_capped
from helexa.wire.neuron import Discovery, LoadRequest, LoadResponse, ModelInfo, ModelList, NeuronHealth, UnloadRequest

__all__ = ["NeuronClient", "error_from_response"]

_T = TypeVar("_T")
_encoder = msgspec.json.Encoder()


class NeuronClient:
    """The control API of ``ref``, over the gateway's shared session, with its bearer token. Answers are read
    whole up to ``max_answer`` bytes; redirects are never followed (the token and a load's body would go with
    them to wherever the neuron points)."""

    def __init__(
        self, session: aiohttp.ClientSession, ref: NeuronRef, limit_s: float, *, max_answer: int = MAX_BODY_BYTES
    ) -> None:
        self.session = session
        self.ref = ref
        self.base = ref.endpoint.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=limit_s)
        self.headers = {"Authorization": f"Bearer {ref.token}"} if ref.token else {}
        self.max_answer = max_answer

    async def _call(
        self, method: str, path: str, kind: type[_T], *, body: Any = None, limit_s: float | None = None
    ) -> _T:
        raw = await self._raw(method, path, body=body, limit_s=limit_s)
        try:
            return msgspec.json.decode(raw, type=kind)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"neuron {self.ref.name!r} sent an unreadable answer to {path}: {exc}") from None

    async def _raw(
        self, method: str, path: str, *, body: Any = None, limit_s: float | None = None, params: Any = None
    ) -> bytes:
        """The body of a successful answer. :raises HelexaError: the neuron's error; UpstreamError: no answer."""
        data = _encoder.encode(body) if body is not None else None
        headers = {**self.headers, "Content-Type": "application/json"} if data else self.headers
        limit = aiohttp.ClientTimeout(total=limit_s) if limit_s else self.timeout
        try:
            async with self.session.request(
                method,
                self.base + path,
                data=data,
                headers=headers,
                timeout=limit,
                params=params,
                allow_redirects=False,
            ) as resp:
                if 300 <= resp.status < 400:
                    raise UpstreamError(
                        f"neuron {self.ref.name!r} answered {method} {path} with a redirect ({resp.status}); the "
                        "gateway does not follow redirects: set [[neurons]] endpoint to the address it serves on"
                    )
                raw = await read_capped(resp, self.max_answer, f"neuron {self.ref.name!r}")
                if resp.status >= 400:
                    raise error_from_response(f"neuron {self.ref.name!r}", resp.status, raw)
                return raw
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(f"neuron {self.ref.name!r} did not answer {method} {path}: {exc!r}") from None

    async def discovery(self) -> Discovery:
        """``GET /discovery``."""
        return await self._call("GET", "/discovery", Discovery)

    async def health(self) -> NeuronHealth:
        """``GET /health``."""
        return await self._call("GET", "/health", NeuronHealth)

    async def models(self) -> list[ModelInfo]:
        """``GET /models``."""
        return (await self._call("GET", "/models", ModelList)).models

    async def load(self, request: LoadRequest, limit_s: float) -> LoadResponse:
        """``POST /models/load``; waits for the engine. A preflight refusal is re-raised as it came (422)."""
        return await self._call("POST", "/models/load", LoadResponse, body=request, limit_s=limit_s)

    async def count_tokens(self, model_id: str, messages: list[dict[str, Any]], tools: list[Any]) -> int:
        """``POST /tokenize``: prompt tokens of chat ``messages`` with the model's own tokenizer."""
        body = {"model": model_id, "messages": messages, "tools": tools}
        return (await self._call("POST", "/tokenize", _TokenCount, body=body)).count

    async def logs(self, model_id: str, lines: int) -> str:
        """``GET /models/{id}/logs``: the engine's last ``lines`` lines of output."""
        path = "/models/" + quote(model_id, safe="") + "/logs"  # one path segment, whatever the id holds
        raw = await self._raw("GET", path, params={"lines": str(lines)})
        return raw.decode(errors="replace")

    async def unload(self, model_id: str, *, stop: bool = False, limit_s: float | None = None) -> LoadResponse:
        """``POST /models/unload``: sleep where the engine can, or ``stop`` it for real (``limit_s``: how long the
        neuron may take, default ``neuron_timeout``)."""
        body = UnloadRequest(model_id=model_id, stop=stop)
        return await self._call("POST", "/models/unload", LoadResponse, body=body, limit_s=limit_s)


class _TokenCount(msgspec.Struct):
    count: int


class _ErrorBody(msgspec.Struct):
    error: dict[str, Any] = {}


def error_from_response(origin: str, status: int, raw: bytes) -> HelexaError:
    """A neuron's (or engine's) error answer as a HelexaError that keeps its status, message and code.

    A structured preflight refusal (422 with ``kind``) stays a :class:`PreflightError`; 5xx become 502.
    """
    try:
        error = msgspec.json.decode(raw, type=_ErrorBody).error
    except msgspec.DecodeError:
        error = {}
    message = str(error.get("message") or raw[:200].decode(errors="replace") or f"HTTP {status}")
    if status == 422 and "kind" in error:
        return PreflightError(error["kind"], str(error.get("model_id", "")), message, str(error.get("suggestion", "")))
    if status == 400 and error.get("code") == ContextLengthExceeded.code:
        return ContextLengthExceeded(_count(error.get("n_prompt_tokens")), _count(error.get("n_ctx")), message)
    relayed = status if status in (400, 401, 403, 404, 409, 413, 422, 429, 501) else 502
    return HelexaError(f"{origin}: {message}", code=str(error.get("code") or "upstream_error"), status_override=relayed)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
