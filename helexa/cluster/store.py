"""The shared store: one client (a connection pool) to Valkey/Redis, whether it answers, and the live gateways.

Every gateway beats once a second: it adds itself to a sorted set with an expiry in the store's own clock (a Lua
script reads ``TIME``, so gateways' clocks never need to agree) and reads who else is alive. A call that fails
(the store down, unreachable, too slow) marks the store down — a metric, ``/fleet`` and one log line say so —
and raises :class:`StoreUnavailable`; the next beat that gets an answer marks it up again and runs what waited
for it (:meth:`ClusterStore.when_up`). Nothing is buffered while it is down except what a caller queues itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from helexa.errors import HelexaError

__all__ = ["BEAT_S", "ClusterStore", "StoreUnavailable", "gateway_name", "redact"]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")
BEAT_S = 1.0  # how often a gateway says it is alive
ALIVE_S = 3.0  # how long a beat counts: a gateway silent this long is gone (its requests' slots are freed)
CALL_TIMEOUT_S = 1.0  # one call to the store, at most (a store that hangs counts as down)

_BEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""


class StoreUnavailable(HelexaError):
    """The cluster store does not answer (503): what needs the other gateways cannot be done now."""

    status = 503
    code = "store_unavailable"


def gateway_name(configured: str = "") -> str:
    """This gateway's name among its peers: ``configured``, else ``host:pid`` (the host name reduced to the
    characters a store key and a log line may hold)."""
    if configured:
        return configured
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname())[:48] or "gateway"
    return f"{host}:{os.getpid()}"


def redact(url: str) -> str:
    """``url`` without its password (what logs and ``/fleet`` show)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return parts._replace(netloc=user + netloc).geturl()


class ClusterStore:
    """The store at ``url`` (``redis://…``), keys under ``prefix``, this gateway called ``name``, one of at least
    ``expected`` gateways (0: as many as the last beat showed).

    ``up``: the last call got an answer; ``error``: why not, when it did not; ``peers``: the live gateways as of
    the last beat (this one included); ``on_change(up)``: called when ``up`` changes.
    """

    def __init__(self, url: str, *, prefix: str, name: str, expected: int = 0) -> None:
        self.url, self.prefix, self.name, self.expected = url, prefix, name, expected
        self.redis: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=CALL_TIMEOUT_S, socket_connect_timeout=CALL_TIMEOUT_S, decode_responses=False
        )
        self.up = False
        self.error = "not reached yet"
        self.peers: tuple[str, ...] = ()
        self.on_change: list[Callable[[bool], None]] = []
        self._waiting: list[Callable[[], Awaitable[None]]] = []
        self._beat = self.redis.register_script(_BEAT)
        self._down_since = time.monotonic()
        self._said_down = False

    def key(self, *parts: str) -> str:
        """A key of this fleet: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    @property
    def members(self) -> int:
        """How many gateways share the fleet (at least this one, and at least ``expected``), as of the last beat
        that got an answer."""
        return max(1, len(self.peers), self.expected)

    async def call(self, op: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        """``await op(*args, **kwargs)`` (a call on :attr:`redis` or a script), bounded by
        :data:`CALL_TIMEOUT_S`.

        :raises StoreUnavailable: it failed; the store is marked down until the next beat gets an answer.
        """
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                result = await op(*args, **kwargs)
        except (RedisError, OSError, TimeoutError) as exc:
            self._mark(False, f"{type(exc).__name__}: {exc}"[:300])
            raise StoreUnavailable(f"the cluster store does not answer ({self.error})") from None
        if not self.up:
            self._mark(True, "")
        return result

    def when_up(self, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` once the store answers again (at once, in a task, when it does now)."""
        self._waiting.append(action)
        if self.up:
            asyncio.get_running_loop().create_task(self._flush())

    async def beat(self) -> tuple[str, ...]:
        """Say this gateway is alive; return every live gateway. :raises StoreUnavailable: no answer."""
        names = await self.call(self._beat, keys=[self.key("gateways")], args=[self.name, int(ALIVE_S * 1000)])
        self.peers = tuple(sorted(n.decode() for n in names))
        return self.peers

    async def leave(self) -> None:
        """Say this gateway is gone (shutdown): its peers count it out at once."""
        with contextlib.suppress(StoreUnavailable):
            await self.call(self.redis.zrem, self.key("gateways"), self.name)

    async def close(self) -> None:
        """Close the connections."""
        with contextlib.suppress(RedisError, OSError):
            await self.redis.aclose()

    def _mark(self, up: bool, error: str) -> None:
        changed = up != self.up or (not up and not self._said_down)  # a store never reached is said once too
        self.up, self.error = up, error
        if not changed:
            return
        self._said_down = not up
        if up:
            logger.info("the cluster store %s answers again", redact(self.url))
            asyncio.get_running_loop().create_task(self._flush())
        else:
            self._down_since = time.monotonic()
            logger.warning(
                "the cluster store %s does not answer (%s): serving loaded models only, limits per gateway",
                redact(self.url),
                error,
            )
        for callback in self.on_change:
            callback(up)

    async def _flush(self) -> None:
        waiting, self._waiting = self._waiting, []
        for action in waiting:
            try:
                await action()
            except StoreUnavailable:
                self._waiting.append(action)  # down again: next time
