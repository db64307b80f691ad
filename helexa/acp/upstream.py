"""The OpenAI-compatible endpoint ``helexa acp`` talks to: its model list, and one streamed chat completion.

A streamed answer is read event by event (:mod:`helexa.sse`): text and reasoning deltas go to callbacks as they
arrive, tool-call deltas are put together by their ``index``. Closing the response — when the turn is
cancelled — closes the connection, so the gateway stops the engine's request.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from helexa.sse import EventFramer, event_data

__all__ = ["Answer", "Call", "EndpointError", "Upstream"]

Delta = Callable[[str], Awaitable[None]]


class EndpointError(Exception):
    """The endpoint could not be reached or answered with an error; the message says which and what to do."""


@dataclass
class Call:
    """One tool call as the model made it (``arguments`` is the raw JSON text)."""

    id: str
    name: str = ""
    arguments: str = ""


@dataclass
class Answer:
    """One streamed completion, put together."""

    text: str = ""
    calls: list[Call] = field(default_factory=list)
    finish_reason: str = ""
    usage: dict[str, Any] = field(default_factory=dict)


class Upstream:
    """An OpenAI-compatible API at ``url`` (without ``/v1``), with an optional bearer key."""

    def __init__(self, session: aiohttp.ClientSession, url: str, api_key: str = "") -> None:
        self.session = session
        self.url = url.rstrip("/").removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def models(self) -> list[dict[str, Any]]:
        """The endpoint's ``/v1/models`` cards (at least an ``id`` each)."""
        async with self._request("GET", "/v1/models") as resp:
            try:
                data = (await resp.json(content_type=None))["data"]
            except (ValueError, KeyError, TypeError) as exc:
                raise EndpointError(f"{self.url}/v1/models did not answer an OpenAI model list ({exc})") from None
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def chat(self, body: dict[str, Any], on_text: Delta, on_reasoning: Delta) -> Answer:
        """Stream one chat completion of ``body`` (``stream`` is set here), calling back with each delta."""
        answer = Answer()
        calls: dict[int, Call] = {}
        framer = EventFramer()
        async with self._request("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
            async for data in resp.content.iter_any():
                for event in framer.feed(data).split(b"\n\n"):
                    payload = event_data(event) if event else None
                    if payload is None or payload == b"[DONE]":
                        continue
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise EndpointError(f"the endpoint sent an event that is not JSON: {payload[:200]!r}") from None
                    if isinstance(chunk.get("error"), dict):  # an error after the stream began
                        raise EndpointError(f"the model's answer failed: {chunk['error'].get('message', chunk)}")
                    await self._chunk(chunk, answer, calls, on_text, on_reasoning)
        answer.calls = [calls[i] for i in sorted(calls)]
        return answer

    @staticmethod
    async def _chunk(
        chunk: dict[str, Any], answer: Answer, calls: dict[int, Call], on_text: Delta, on_reasoning: Delta
    ) -> None:
        if isinstance(chunk.get("usage"), dict):
            answer.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            if reasoning := delta.get("reasoning_content") or delta.get("reasoning"):
                await on_reasoning(reasoning)
            if text := delta.get("content"):
                answer.text += text
                await on_text(text)
            for part in delta.get("tool_calls") or []:
                call = calls.setdefault(part.get("index", len(calls)), Call(id=""))
                call.id = part.get("id") or call.id or f"call_{len(calls)}"
                function = part.get("function") or {}
                call.name += function.get("name") or ""
                call.arguments += function.get("arguments") or ""
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]

    @contextlib.asynccontextmanager
    async def _request(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """The response, once its status is known to be a success; transport failures as :class:`EndpointError`."""
        try:
            async with self.session.request(method, self.url + path, headers=self.headers, **kwargs) as resp:
                await self._check(resp)
                yield resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EndpointError(
                f"cannot reach {self.url}{path} ({exc or type(exc).__name__}); is the gateway running? "
                "(`helexa run --role both`, or pass --url)"
            ) from None

    async def _check(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        text = await resp.text(errors="replace")
        try:
            message = json.loads(text)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = text[:500]
        hint = " (set the key's environment variable, see --api-key-env)" if resp.status == 401 else ""
        raise EndpointError(f"{resp.method} {resp.url.path} answered {resp.status}: {message}{hint}")
