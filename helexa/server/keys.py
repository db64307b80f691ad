"""API keys with scopes, as one guard (the gateway's clients); their limits are :mod:`helexa.server.limits`'.

Every configured key becomes a :class:`Key`: a name (what logs and metrics show), the SHA-256 of the key
(configs may hold only the digest), its scopes, its limits and its scheduling priority. A request's key is found
by hashing what it presents and comparing with every key's digest in constant time. Scopes: ``inference`` for the
APIs, ``admin`` for ``/admin`` routes (closed when no key has it).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from helexa.cluster.limits import SharedLimits
from helexa.config import AuthSection
from helexa.errors import AuthenticationError, PermissionDenied
from helexa.server.auth import FailureThrottle, presented_token
from helexa.server.hotmetrics import HotCounter
from helexa.server.limits import KeyLimits, KeyUsage, Limits, RateLimited
from helexa.server.middlewares import Guard, Release

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

key_usage_key = web.RequestKey("key_usage_key", KeyUsage)


@dataclass
class Key:
    """One client key: ``digest`` is the SHA-256 of the key."""

    name: str
    digest: bytes
    scopes: frozenset[str]
    limits: KeyLimits = field(default_factory=KeyLimits)
    priority: str = "normal"  # the scheduler's: interactive, normal or batch

    @property
    def limited(self) -> bool:
        """Whether any limit applies (else admitting is free)."""
        return self.limits.any


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
            limits = KeyLimits(entry.requests_per_minute, entry.max_concurrent, entry.tokens_per_hour)
            keys.append(Key(entry.name, digest, frozenset(entry.scopes), limits, entry.priority))
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
    route needs (``inference``, ``admin``, ``any``), or ``None`` when it is open. Off when no key is configured.
    ``shared``: the cluster's limits (in the store), when several gateways share them."""

    def __init__(
        self,
        ring: KeyRing,
        registry: CollectorRegistry,
        *,
        scope_of: Callable[[web.Request], str | None],
        shared: SharedLimits | None = None,
    ) -> None:
        self.ring, self.scope_of = ring, scope_of
        self._requests = HotCounter(
            "helexa_gateway_key_requests", "Requests admitted, by key name.", ("key",), registry=registry
        )
        self._tokens = HotCounter("helexa_gateway_key_tokens", "Tokens used, by key name.", ("key",), registry=registry)
        self._refused = Counter(
            "helexa_gateway_key_rejections", "Requests refused by a key's limits.", ("key", "reason"), registry=registry
        )
        self.limits = Limits(shared, refused=lambda name, reason: self._refused.labels(name, reason).inc())
        self._series = {k.name: (self._requests.labels(k.name), self._tokens.labels(k.name)) for k in ring.keys}

    def enter(self, request: web.Request) -> Release | Awaitable[Release] | None:
        """Admit ``request`` for the scope ``scope_of`` gives it (401, 403 or 429 otherwise); the returned
        callable releases it."""
        return self.admit(request, self.scope_of(request))

    def scoped(self, scope: str) -> Guard:
        """This guard for every request of a sub-application that needs ``scope`` (``/admin``: ``admin``)."""
        return _Scoped(self, scope)

    def admit(self, request: web.Request, scope: str | None) -> Release | Awaitable[Release] | None:
        """Admit ``request`` for ``scope`` (``None``: open); the returned callable releases it — or, when the key's
        limits are counted in the cluster's store, an awaitable of it."""
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
        usage = KeyUsage(key.name, key.limits, self.limits)
        pending = self.limits.admit(usage) if key.limited else None
        if pending is not None:
            return self._admitted_later(request, key, usage, pending)
        return self._admitted(request, key, usage)

    async def _admitted_later(
        self, request: web.Request, key: Key, usage: KeyUsage, pending: Awaitable[None]
    ) -> Release:
        await pending
        return self._admitted(request, key, usage)

    def _admitted(self, request: web.Request, key: Key, usage: KeyUsage) -> Release:
        request[key_usage_key] = usage
        request[request_key_key] = key
        return self._counted(key, usage)

    def _counted(self, key: Key, usage: KeyUsage) -> Release:
        requests, tokens = self._series[key.name]
        requests.inc()
        limits = self.limits

        def release() -> None:
            if key.limited:
                limits.release(usage)
            if usage.tokens:
                tokens.inc(usage.tokens)

        return release

    def key_named(self, name: str) -> Key | None:
        """The configured key called ``name`` (``None``: there is none now)."""
        return next((k for k in self.ring.keys if k.name == name), None)

    async def admit_on_behalf(self, key: Key) -> tuple[KeyUsage, Release]:
        """Admit a request the gateway sends itself for ``key`` (a batch's line): counted, limited and charged as
        one that came with the key; the returned callable releases it.

        :raises RateLimited: past one of the key's limits (the caller may wait ``Retry-After`` and ask again).
        """
        usage = KeyUsage(key.name, key.limits, self.limits)
        if key.limited and (pending := self.limits.admit(usage)) is not None:
            await pending
        return usage, self._counted(key, usage)


class _Scoped:
    """A :class:`KeyGuard` fixed to one scope (see :meth:`KeyGuard.scoped`)."""

    def __init__(self, guard: KeyGuard, scope: str) -> None:
        self.guard, self.scope = guard, scope

    def enter(self, request: web.Request) -> Release | Awaitable[Release] | None:
        """Admit ``request`` for the fixed scope."""
        return self.guard.admit(request, self.scope)
