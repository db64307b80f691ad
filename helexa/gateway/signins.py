"""Who signed in to the fleet page: a random session id -> (key name, admin?), expiring after a while; in this
process, or — with a cluster — in its store, so a visitor keeps the page on whichever gateway a balancer sends it
to. While the store does not answer, sign-ins stay in this process (a visitor may be asked to sign in again)."""

from __future__ import annotations

import contextlib
import secrets
import time

import msgspec

from helexa.cluster.sessions import SharedSessions
from helexa.cluster.store import StoreUnavailable

__all__ = ["SESSION_S", "SignIns"]

SESSION_S = 8 * 3600  # how long a sign-in lasts


class _Session(msgspec.Struct, array_like=True):
    name: str
    admin: bool


class SignIns:
    """The page's sessions; ``shared``: the cluster's store (``None``: this process only)."""

    def __init__(self, shared: SharedSessions | None = None) -> None:
        self.shared = shared
        self._here: dict[str, tuple[str, bool, float]] = {}  # id -> (name, admin, expires at)

    async def open(self, name: str, admin: bool) -> str:
        """A new session for key ``name``; its id."""
        session_id = secrets.token_urlsafe(32)
        if self.shared is not None:
            try:
                await self.shared.put(session_id, msgspec.msgpack.encode(_Session(name, admin)), SESSION_S)
                return session_id
            except StoreUnavailable:
                pass
        now = time.time()
        for old in [s for s, v in self._here.items() if v[2] <= now]:
            del self._here[old]
        self._here[session_id] = (name, admin, now + SESSION_S)
        return session_id

    async def find(self, session_id: str) -> tuple[str, bool] | None:
        """``(key name, admin)`` of a live session, else ``None``."""
        here = self._here.get(session_id)
        if here is not None and here[2] > time.time():
            return here[0], here[1]
        if self.shared is None:
            return None
        try:
            raw = await self.shared.get(session_id)
        except StoreUnavailable:
            return None
        if raw is None:
            return None
        try:
            session = msgspec.msgpack.decode(raw, type=_Session)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return session.name, session.admin

    async def close(self, session_id: str) -> None:
        """Forget ``session_id``."""
        self._here.pop(session_id, None)
        if self.shared is not None:
            with contextlib.suppress(StoreUnavailable):
                await self.shared.drop(session_id)
