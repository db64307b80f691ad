"""What the gateways of a cluster tell each other, as plain bytes in the store: each gateway's own records, the
leader's notes to all, and a channel of short events so that nobody polls for them.

- :meth:`Exchange.put_mine` / :meth:`Exchange.gather`: every gateway keeps records of one ``kind`` under its own
  name (a hash, replaced whole, expiring with the gateway: a dead one's vanish) — what it waits for, what it uses;
  the leader gathers the live gateways' records.
- :meth:`Exchange.put` / :meth:`Exchange.get`: one value under a name, with an expiry — the leader's plan.
- :meth:`Exchange.note` / :meth:`Exchange.notes`: a shared hash with an expiry — the leader's verdicts by model.
- :meth:`Exchange.send` / :meth:`Exchange.listen`: topics on one pub/sub channel (``needs``, ``plan``,
  ``verdict``, ``loaded``), so a change reaches the others in milliseconds; every record stays readable without
  them, should an event be missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from helexa.cluster.store import ALIVE_S, ClusterStore, StoreUnavailable

__all__ = ["Exchange"]

logger = logging.getLogger(__name__)
RETRY_S = 1.0  # how soon a lost event subscription is tried again


class Exchange:
    """Records and events of the cluster of ``store``; every method is one round trip (a pipeline).

    :raises StoreUnavailable: (every method but :meth:`listen`) the store does not answer.
    """

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self.channel = store.key("events")

    async def put_mine(self, kind: str, records: dict[str, bytes]) -> None:
        """Replace this gateway's records of ``kind`` with ``records`` (they expire unless put again within
        :data:`~helexa.cluster.store.ALIVE_S` times three)."""
        key = self.store.key(kind, self.store.name)

        async def replace() -> None:
            async with self.store.redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                if records:
                    pipe.hset(key, mapping=records)
                    pipe.pexpire(key, int(ALIVE_S * 3000))
                await pipe.execute()

        await self.store.call(replace)

    async def gather(self, kind: str) -> dict[str, dict[str, bytes]]:
        """Every live gateway's records of ``kind`` but this one's, by gateway name."""
        others = [p for p in self.store.peers if p != self.store.name]
        if not others:
            return {}

        async def read() -> list[dict[bytes, bytes]]:
            async with self.store.redis.pipeline(transaction=False) as pipe:
                for peer in others:
                    pipe.hgetall(self.store.key(kind, peer))
                return await pipe.execute()

        found = await self.store.call(read)
        return {
            peer: {field.decode(): value for field, value in records.items()}
            for peer, records in zip(others, found, strict=True)
            if records
        }

    async def put(self, name: str, value: bytes, ttl_s: float) -> None:
        """Keep ``value`` under ``name`` for ``ttl_s`` seconds."""
        await self.store.call(self.store.redis.set, self.store.key(name), value, px=int(ttl_s * 1000))

    async def get(self, name: str) -> bytes | None:
        """The value under ``name`` (``None``: none, or expired)."""
        return await self.store.call(self.store.redis.get, self.store.key(name))

    async def note(self, name: str, field: str, value: bytes, ttl_s: float) -> None:
        """Set ``field`` of the shared hash ``name`` (the whole hash expires ``ttl_s`` after its last note)."""
        key = self.store.key(name)

        async def write() -> None:
            async with self.store.redis.pipeline(transaction=True) as pipe:
                pipe.hset(key, field, value)
                pipe.pexpire(key, int(ttl_s * 1000))
                await pipe.execute()

        await self.store.call(write)

    async def notes(self, name: str) -> dict[str, bytes]:
        """Every field of the shared hash ``name``."""
        found = await self.store.call(self.store.redis.hgetall, self.store.key(name))
        return {field.decode(): value for field, value in found.items()}

    async def listen(self, on_topic: Callable[[str, str], None]) -> None:
        """Call ``on_topic(topic, sender)`` for each event until cancelled, subscribing again after the store
        comes back (events sent meanwhile are lost: readers re-read the records when the store is back)."""
        while True:
            pubsub = self.store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        topic, _, sender = message["data"].decode(errors="replace").partition(" ")
                        on_topic(topic, sender)
            except (RedisError, OSError) as exc:
                logger.debug("cluster events: %s; subscribing again in %.0fs", exc, RETRY_S)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            await asyncio.sleep(RETRY_S)

    async def send(self, topic: str) -> None:
        """Tell every gateway that ``topic`` changed, signed with this gateway's name (its own listener can skip
        it); lost when the store does not answer (the records say it all the same)."""
        with contextlib.suppress(StoreUnavailable):
            await self.store.call(self.store.redis.publish, self.channel, f"{topic} {self.store.name}")
