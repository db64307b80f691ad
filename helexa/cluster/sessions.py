"""The fleet page's sign-ins, kept in the store so that any gateway behind a balancer knows a visitor."""

from __future__ import annotations

from helexa.cluster.store import ClusterStore

__all__ = ["SharedSessions"]


class SharedSessions:
    """Sessions by id in ``store``, each expiring on its own.

    :raises helexa.cluster.store.StoreUnavailable: (every method) the store does not answer.
    """

    def __init__(self, store: ClusterStore) -> None:
        self.store = store

    async def put(self, session_id: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` for ``session_id`` for ``ttl_s`` seconds."""
        await self.store.call(self.store.redis.set, self.store.key("session", session_id), value, px=int(ttl_s * 1000))

    async def get(self, session_id: str) -> bytes | None:
        """The value of ``session_id`` (``None``: unknown or expired)."""
        return await self.store.call(self.store.redis.get, self.store.key("session", session_id))

    async def drop(self, session_id: str) -> None:
        """Forget ``session_id``."""
        await self.store.call(self.store.redis.delete, self.store.key("session", session_id))
