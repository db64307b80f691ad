"""API keys with scopes and limits, as one middleware (the gateway's clients).

Every configured key becomes a :class:`Key`: a name (what logs and metrics show), the SHA-256 of the key
(configs may hold only the digest), its scopes and its limits. A request's key is found by hashing what it
presents and comparing with every key's digest in constant time. Scopes: ``inference`` for the APIs,
``admin`` for ``/admin`` routes (closed when no key has it). Limits, per key name: requests per minute (a token
bucket), requests at once, and tokens per hour; past one, 429 with ``Retry-After``.

Tokens per hour are reserved, then settled: a request reserves what it may use — its prompt (a token per 4
bytes) and its ``max_tokens`` — before it waits or is sent, and is refused when that does not fit beside what
the hour used and what requests in flight reserved; when it ends, its reservation is replaced by what it used.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from helexa.config import AuthSection
from helexa.errors import AuthenticationError, HelexaError, PermissionDenied
from helexa.server.auth import FailureThrottle, presented_token
from helexa.server.hotmetrics import HotCounter
from helexa.server.middlewares import Guard

__all__ = [
    "Key",
    "KeyGuard",
    "KeyRing",
    "KeyUsage",
    "RateLimited",
    "digest_of",
    "key_usage_key",
    "request_key_key",
]


class RateLimited(HelexaError):
    """A key went past one of its limits (429 with Retry-After); ``reason`` names the limit."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, reason: str, retry_after: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})
        self.reason = reason


@dataclass
class KeyUsage:
    """What a request used (``tokens``, set by the route that knows) and reserved, for its key's tokens per hour."""

    key: Key
    refused: Callable[[str], None] = lambda reason: None  # counts a refusal by reason (the guard's metric)
    tokens: int = 0
    reserved: int = 0

    def reserve(self, prompt_bytes: int, max_tokens: int | None) -> None:
        """Reserve what this request may use: a token per 4 bytes of prompt, plus ``max_tokens``.

        :raises RateLimited: that does not fit in what is left of the key's hour (nothing is reserved then).
        """
        if not self.key.tokens_per_hour:
            return
        estimate = prompt_bytes // 4 + max(0, max_tokens or 0)
        try:
            self.key.reserve(estimate, time.monotonic())
        except RateLimited as exc:
            self.refused(exc.reason)
            raise
        self.reserved += estimate

    @property
    def estimate(self) -> int:
        """What a request cut before its answer is charged: its reservation (at least a token)."""
        return max(1, self.reserved)


key_usage_key = web.RequestKey("key_usage_key", KeyUsage)


@dataclass
class Key:
    """One client key: ``digest`` is the SHA-256 of the key; limits of 0 mean none."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    requests_per_minute: int = 0
    max_concurrent: int = 0
    tokens_per_hour: int = 0
    priority: str = "normal"  # the scheduler's: interactive, normal or batch
    # state, per key
    bucket: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    hour_started: float = field(default_factory=time.monotonic)
    hour_tokens: int = 0
    reserved_tokens: int = 0  # reserved by requests in flight

    @property
    def limited(self) -> bool:
        """Whether any limit applies (else admitting is free)."""
        return bool(self.requests_per_minute or self.max_concurrent or self.tokens_per_hour)

    def _hour(self, now: float) -> None:
        if now - self.hour_started >= 3600:
            self.hour_started, self.hour_tokens = now, 0

    def reserve(self, tokens: int, now: float) -> None:
        """Reserve ``tokens`` of this hour for a request in flight. :raises RateLimited: they do not fit."""
        self._hour(now)
        left = self.tokens_per_hour - self.hour_tokens - self.reserved_tokens
        if tokens > left:
            wait = 3600 - (now - self.hour_started)
            held = f", {self.reserved_tokens} of them reserved by requests in flight" if self.reserved_tokens else ""
            message = (
                f"key {self.name!r} has {max(0, left)} of its {self.tokens_per_hour} tokens left this hour{held}; this "
                f"request may use up to {tokens} (its prompt and max_tokens): lower max_tokens, or retry later"
            )
            raise RateLimited(message, "tokens_per_hour", wait if tokens <= self.tokens_per_hour else 3600)
        self.reserved_tokens += tokens

    def settle(self, reserved: int, used: int) -> None:
        """A request that reserved ``reserved`` tokens ended having used ``used``."""
        self.reserved_tokens = max(0, self.reserved_tokens - reserved)
        self.hour_tokens += used

    def admit(self, now: float) -> None:
        """Count one request against the limits. :raises RateLimited: past one, with ``Retry-After``."""
        if self.tokens_per_hour:
            self._hour(now)
            if self.hour_tokens >= self.tokens_per_hour:
                wait = 3600 - (now - self.hour_started)
                message = f"key {self.name!r} used its {self.tokens_per_hour} tokens this hour"
                raise RateLimited(message, "tokens_per_hour", wait)
        if self.max_concurrent and self.in_flight >= self.max_concurrent:
            message = f"key {self.name!r} already has {self.in_flight} requests in flight"
            raise RateLimited(message, "max_concurrent", 1)
        if self.requests_per_minute:
            rate = self.requests_per_minute / 60
            self.bucket = min(self.requests_per_minute, self.bucket + (now - self.refilled) * rate)
            self.refilled = now
            if self.bucket < 1:
                message = f"key {self.name!r} is limited to {self.requests_per_minute} requests a minute"
                raise RateLimited(message, "requests_per_minute", (1 - self.bucket) / rate)
            self.bucket -= 1


request_key_key = web.RequestKey("request_key_key", Key)  # the key a request was admitted with


KNOWN_KEYS = 1024  # valid keys remembered by their presented form (see KeyRing.find)


def digest_of(secret: str) -> bytes:
    """The SHA-256 of a key as presented (surrogate-escaped bytes for non-UTF-8 headers)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).digest()


class KeyRing:
    """The configured keys. Empty: authentication is off."""

    @classmethod
    def from_config(cls, auth: AuthSection) -> KeyRing:
        """The keys of ``[auth]``: ``api_keys`` (named ``key-N``), ``admin_keys`` (``admin-N``), ``[[auth.keys]]``."""
        keys = [Key(f"key-{i}", digest_of(k), frozenset({"inference"})) for i, k in enumerate(auth.api_keys, 1)]
        keys += [Key(f"admin-{i}", digest_of(k), frozenset({"admin"})) for i, k in enumerate(auth.admin_keys, 1)]
        for entry in auth.keys:
            digest = bytes.fromhex(entry.sha256) if entry.sha256 else digest_of(entry.key)
            keys.append(
                Key(
                    entry.name,
                    digest,
                    frozenset(entry.scopes),
                    requests_per_minute=entry.requests_per_minute,
                    max_concurrent=entry.max_concurrent,
                    tokens_per_hour=entry.tokens_per_hour,
                    priority=entry.priority,
                    bucket=float(entry.requests_per_minute),
                )
            )
        return cls(keys)

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self.admin_configured = any("admin" in k.scopes for k in keys)
        self.throttle = FailureThrottle()  # wrong keys per address, for the API and the page's sign-in alike
        # keys presented before and found valid: a hit skips the hash; only valid keys enter, bounded
        self._known: dict[str, Key] = {}

    def find(self, presented: str) -> Key | None:
        """The key ``presented`` is: its SHA-256 compared in constant time against every key.

        A key found once is remembered (up to :data:`KNOWN_KEYS` of them) and looked up by the string itself
        afterwards; the dict's string hash is keyed per process, so the lookup's timing tells an attacker
        nothing about any key. Unknown strings are never remembered.
        """
        known = self._known.get(presented)
        if known is not None:
            return known
        digest, found = digest_of(presented), None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is not None and len(self._known) < KNOWN_KEYS:
            self._known[presented] = found
        return found


class KeyGuard:
    """Keys, scopes and limits as a :class:`helexa.server.middlewares.Guard`. ``scope_of(request)``: the scope a
    route needs (``inference``, ``admin``, ``any``), or ``None`` when it is open. Off when no key is configured."""

    def __init__(
        self, ring: KeyRing, registry: CollectorRegistry, *, scope_of: Callable[[web.Request], str | None]
    ) -> None:
        self.ring, self.scope_of = ring, scope_of
        self._requests = HotCounter(
            "helexa_gateway_key_requests", "Requests admitted, by key name.", ("key",), registry=registry
        )
        self._tokens = HotCounter("helexa_gateway_key_tokens", "Tokens used, by key name.", ("key",), registry=registry)
        self._refused = Counter(
            "helexa_gateway_key_rejections", "Requests refused by a key's limits.", ("key", "reason"), registry=registry
        )
        self._series = {k.name: (self._requests.labels(k.name), self._tokens.labels(k.name)) for k in ring.keys}

    def enter(self, request: web.Request) -> Callable[[], None] | None:
        """Admit ``request`` for the scope ``scope_of`` gives it (401, 403 or 429 otherwise); the returned
        callable releases it."""
        return self.admit(request, self.scope_of(request))

    def scoped(self, scope: str) -> Guard:
        """This guard for every request of a sub-application that needs ``scope`` (``/admin``: ``admin``)."""
        return _Scoped(self, scope)

    def admit(self, request: web.Request, scope: str | None) -> Callable[[], None] | None:
        """Admit ``request`` for ``scope`` (``None``: open); the returned callable releases it."""
        if not self.ring.keys or scope is None:
            return None
        presented = presented_token(request, allow_x_api_key=True)
        if not presented:
            raise AuthenticationError(
                "missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        address = request.remote or ""
        self.ring.throttle.check(address)
        key = self.ring.find(presented)
        if key is None:
            self.ring.throttle.failed(address)
            raise AuthenticationError("invalid API key", headers={"WWW-Authenticate": "Bearer"})
        if scope == "admin" and "admin" not in key.scopes:
            closed = "" if self.ring.admin_configured else " (none is configured: set [auth] admin_keys)"
            raise PermissionDenied(f"this route needs a key with the admin scope{closed}")
        if scope == "inference" and "inference" not in key.scopes:
            raise PermissionDenied(f"key {key.name!r} has no inference scope")
        if key.limited:
            try:
                key.admit(time.monotonic())
            except RateLimited as exc:
                self._refused.labels(key.name, exc.reason).inc()
                raise
        requests, tokens = self._series[key.name]
        requests.inc()
        usage = request[key_usage_key] = KeyUsage(key, lambda reason: self._refused.labels(key.name, reason).inc())
        request[request_key_key] = key
        key.in_flight += 1

        def release() -> None:
            key.in_flight -= 1
            if usage.tokens or usage.reserved:
                key.settle(usage.reserved, usage.tokens)
            if usage.tokens:
                tokens.inc(usage.tokens)

        return release


class _Scoped:
    """A :class:`KeyGuard` fixed to one scope (see :meth:`KeyGuard.scoped`)."""

    def __init__(self, guard: KeyGuard, scope: str) -> None:
        self.guard, self.scope = guard, scope

    def enter(self, request: web.Request) -> Callable[[], None] | None:
        """Admit ``request`` for the fixed scope."""
        return self.guard.admit(request, self.scope)
