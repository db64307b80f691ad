"""Per-key limits: requests per minute (a token bucket), requests at once, and tokens per hour (reserved, then
settled); past one, 429 with ``Retry-After``.

Tokens per hour are reserved, then settled: a request reserves what it may use — its prompt (a token per 4
bytes) and its ``max_tokens`` — before it waits or is sent, and is refused when that does not fit beside what
the hour used and what requests in flight reserved; when it ends, its reservation is replaced by what it used.

One gateway keeps the counts in its own process. Gateways of a cluster keep them in the store
(:mod:`helexa.cluster.limits`: one atomic script per check, so R gateways admit the limit, not R times it); while
the store does not answer, each gateway enforces its share — the limit divided by the gateways it last saw
alive, at least one request — and what it could not tell the store (slots to free, tokens used) is told once
the store is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from helexa.cluster.limits import SharedLimits
from helexa.cluster.store import StoreUnavailable
from helexa.errors import HelexaError

__all__ = ["KeyLimits", "KeyUsage", "Limits", "RateLimited"]

logger = logging.getLogger(__name__)
_members = itertools.count()  # requests' names in the store: unique in this process, whatever ids clients send


class RateLimited(HelexaError):
    """A key went past one of its limits (429 with Retry-After); ``reason`` names the limit."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
        self.reason = reason


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits (0: none)."""

    requests_per_minute: int = 0
    max_concurrent: int = 0
    tokens_per_hour: int = 0

    @property
    def any(self) -> bool:
        """Whether any limit applies (else admitting is free)."""
        return bool(self.requests_per_minute or self.max_concurrent or self.tokens_per_hour)

    def share(self, gateways: int) -> KeyLimits:
        """What one of ``gateways`` gateways may admit alone (each limit divided, at least one)."""
        if gateways <= 1:
            return self
        return KeyLimits(*(-(-limit // gateways) if limit else 0 for limit in self._values()))

    def _values(self) -> tuple[int, int, int]:
        return self.requests_per_minute, self.max_concurrent, self.tokens_per_hour


def _too_many(name: str, limits: KeyLimits, reason: str, *, in_flight: int = 0) -> str:
    if reason == "tokens_per_hour":
        return f"key {name!r} used its {limits.tokens_per_hour} tokens this hour"
    if reason == "max_concurrent":
        return f"key {name!r} already has {in_flight or limits.max_concurrent} requests in flight"
    return f"key {name!r} is limited to {limits.requests_per_minute} requests a minute"


def _no_room(name: str, per_hour: int, left: int, reserved: int, tokens: int) -> str:
    held = f", {reserved} of them reserved by requests in flight" if reserved else ""
    return (
        f"key {name!r} has {max(0, left)} of its {per_hour} tokens left this hour{held}; this request may use up to "
        f"{tokens} (its prompt and max_tokens): lower max_tokens, or retry later"
    )


@dataclass
class _Counters:
    """One key's counts in this process (the counts, while alone; this gateway's share, while cut off)."""

    bucket: float = -1.0  # -1: full (its size depends on the limit it is used with)
    refilled: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    hour_started: float = field(default_factory=time.monotonic)
    hour_tokens: int = 0
    reserved_tokens: int = 0  # reserved by requests in flight

    def _hour(self, now: float) -> None:
        if now - self.hour_started >= 3600:
            self.hour_started, self.hour_tokens = now, 0

    def admit(self, name: str, limits: KeyLimits, now: float) -> None:
        """Count one request. :raises RateLimited: past a limit, with ``Retry-After``."""
        if limits.tokens_per_hour:
            self._hour(now)
            if self.hour_tokens >= limits.tokens_per_hour:
                message = _too_many(name, limits, "tokens_per_hour")
                raise RateLimited(message, "tokens_per_hour", 3600 - (now - self.hour_started))
        if limits.max_concurrent and self.in_flight >= limits.max_concurrent:
            message = _too_many(name, limits, "max_concurrent", in_flight=self.in_flight)
            raise RateLimited(message, "max_concurrent", 1)
        if limits.requests_per_minute:
            rpm = limits.requests_per_minute
            rate = rpm / 60
            level = rpm if self.bucket < 0 else self.bucket
            self.bucket = min(rpm, level + (now - self.refilled) * rate)
            self.refilled = now
            if self.bucket < 1:
                message = _too_many(name, limits, "requests_per_minute")
                raise RateLimited(message, "requests_per_minute", (1 - self.bucket) / rate)
            self.bucket -= 1

    def reserve(self, name: str, per_hour: int, tokens: int, now: float) -> None:
        """Reserve ``tokens`` of this hour. :raises RateLimited: they do not fit."""
        self._hour(now)
        left = per_hour - self.hour_tokens - self.reserved_tokens
        if tokens > left:
            wait = 3600 - (now - self.hour_started) if tokens <= per_hour else 3600
            raise RateLimited(_no_room(name, per_hour, left, self.reserved_tokens, tokens), "tokens_per_hour", wait)
        self.reserved_tokens += tokens

    def settle(self, reserved: int, used: int) -> None:
        self.reserved_tokens = max(0, self.reserved_tokens - reserved)
        self.hour_tokens += used


@dataclass(eq=False)
class KeyUsage:
    """One request of a key with limits: what it reserved and used (``tokens``, set by the route that knows), and
    where its counts live (the store, or this process)."""

    name: str
    limits: KeyLimits
    owner: Limits
    tokens: int = 0
    reserved: int = 0
    member: str = ""  # its name in the store ("" = none: counted here)
    slot: bool = False  # it holds a slot of max_concurrent in the store
    reserved_shared: bool = False  # its reservation is in the store

    async def reserve(self, prompt_bytes: int, max_tokens: int | None) -> None:
        """Reserve what this request may use: a token per 4 bytes of prompt, plus ``max_tokens``.

        :raises RateLimited: that does not fit in what is left of the key's hour (nothing is reserved then).
        """
        if self.limits.tokens_per_hour:
            await self.owner.reserve(self, prompt_bytes // 4 + max(0, max_tokens or 0))

    @property
    def estimate(self) -> int:
        """What a request cut before its answer is charged: its reservation (at least a token)."""
        return max(1, self.reserved)


class Limits:
    """The limits of every key: counted here, or in the cluster store (``shared``) while it answers."""

    def __init__(
        self, shared: SharedLimits | None = None, *, refused: Callable[[str, str], None] | None = None
    ) -> None:
        self.shared = shared
        self.refused = refused or (lambda name, reason: None)  # (key name, reason): a metric
        self._counters: dict[str, _Counters] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _here(self, name: str) -> _Counters:
        counters = self._counters.get(name)
        if counters is None:
            counters = self._counters[name] = _Counters()
        return counters

    def _local_limits(self, limits: KeyLimits) -> KeyLimits:
        """What this gateway may admit on its own: everything alone; its share while the store is away."""
        return limits if self.shared is None else limits.share(self.shared.store.members)

    def _shared_now(self) -> bool:
        return self.shared is not None and self.shared.store.up

    def admit(self, usage: KeyUsage) -> Awaitable[None] | None:
        """Count one request of ``usage``'s key: at once here, or (with a store that answers) in the store — then
        the returned awaitable does it.

        :raises RateLimited: (from this call, or the awaitable) past a limit.
        """
        if self._shared_now():
            return self._admit_shared(usage)
        self._admit_here(usage)
        return None

    def _admit_here(self, usage: KeyUsage) -> None:
        counters = self._here(usage.name)
        try:
            counters.admit(usage.name, self._local_limits(usage.limits), time.monotonic())
        except RateLimited as exc:
            self.refused(usage.name, exc.reason)
            raise
        counters.in_flight += 1

    async def _admit_shared(self, usage: KeyUsage) -> None:
        assert self.shared is not None
        limits, member = usage.limits, self.shared.member(str(next(_members)))
        try:
            refusal = await self.shared.admit(
                usage.name,
                per_minute=limits.requests_per_minute,
                at_once=limits.max_concurrent,
                per_hour=limits.tokens_per_hour,
                member=member,
            )
        except StoreUnavailable:
            self._admit_here(usage)  # the store just went away: this gateway's share
            return
        if refusal is not None:
            self.refused(usage.name, refusal.reason)
            message = _too_many(usage.name, limits, refusal.reason)
            raise RateLimited(message, refusal.reason, refusal.retry_after)
        usage.member, usage.slot = member, bool(limits.max_concurrent)

    async def reserve(self, usage: KeyUsage, tokens: int) -> None:
        """Reserve ``tokens`` of ``usage``'s key's hour. :raises RateLimited: they do not fit."""
        per_hour = usage.limits.tokens_per_hour
        if self._shared_now():
            assert self.shared is not None
            member = usage.member or self.shared.member(str(next(_members)))
            try:
                found = await self.shared.reserve(usage.name, per_hour=per_hour, member=member, tokens=tokens)
            except StoreUnavailable:
                pass  # the store just went away: this gateway's share, below
            else:
                if not found.ok:
                    self.refused(usage.name, "tokens_per_hour")
                    message = _no_room(usage.name, per_hour, found.left, found.reserved, tokens)
                    raise RateLimited(message, "tokens_per_hour", found.retry_after if tokens <= per_hour else 3600)
                usage.member, usage.reserved_shared = member, True
                usage.reserved += tokens
                return
        share = self._local_limits(usage.limits).tokens_per_hour
        try:
            self._here(usage.name).reserve(usage.name, share, tokens, time.monotonic())
        except RateLimited as exc:
            self.refused(usage.name, exc.reason)
            raise
        usage.reserved += tokens

    def release(self, usage: KeyUsage) -> None:
        """``usage``'s request ended: free its slot, settle its tokens — here at once, in the store in a task (and
        once the store is back, if it does not answer now)."""
        if not usage.limits.any:
            return
        if usage.slot or usage.reserved_shared:
            self._spawn(self._release_shared(usage))
        if not usage.slot:
            counters = self._counters.get(usage.name)
            if counters is not None:
                counters.in_flight = max(0, counters.in_flight - 1)
        if not usage.reserved_shared and (usage.tokens or usage.reserved):
            self._here(usage.name).settle(usage.reserved, usage.tokens)

    async def _release_shared(self, usage: KeyUsage) -> None:
        shared = self.shared
        assert shared is not None
        try:
            await shared.finish(
                usage.name, usage.member, used=usage.tokens, reserved=usage.reserved_shared, slot=usage.slot
            )
            usage.slot = usage.reserved_shared = False
        except StoreUnavailable:
            shared.store.when_up(lambda: self._release_shared(usage))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a key's usage could not be recorded: %s", task.exception())
