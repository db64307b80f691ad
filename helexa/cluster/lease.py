"""The leader: one gateway of a cluster holds a lease in the store and is the only one that places loads,
evictions and idle unloads; the others serve requests and forward what they wait for (``exchange``).

The lease is a key with an expiry in the store's clock (``SET NX PX``), renewed three times per
``lease_seconds``; each new holder increments an epoch (a fencing number the ``/fleet`` page shows). A gateway
counts itself leader only until ``lease_seconds`` after the start of its last successful renewal, less a fifth
for the trip, so it stops placing before the key expires in the store — a leader cut off from the store steps
down by itself, and a dead one's key expires: either way another takes over within about ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from helexa.cluster.store import ClusterStore, StoreUnavailable

__all__ = ["Leadership"]

logger = logging.getLogger(__name__)

_HOLD = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), current}
end
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, redis.call('INCR', KEYS[2]), ARGV[1]}
end
return {0, tonumber(redis.call('GET', KEYS[2]) or '0'), current}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Leadership:
    """Who leads the cluster of ``store``; ``on_change(leading)`` is called when this gateway starts or stops
    leading. ``clock`` is injectable for tests."""

    def __init__(
        self, store: ClusterStore, lease_seconds: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store, self.lease, self.clock = store, lease_seconds, clock
        self.leader = ""  # the leader's name as last seen ("" = none, or unknown)
        self.epoch = 0
        self.on_change: list[Callable[[bool], None]] = []
        self._valid_until = 0.0
        self._leading = False
        self._hold = store.redis.register_script(_HOLD)
        self._release = store.redis.register_script(_RELEASE)

    @property
    def leading(self) -> bool:
        """This gateway holds the lease, and has renewed it recently enough to be sure."""
        return self._leading and self.clock() < self._valid_until

    async def tick(self) -> None:
        """Take the lease when it is free, renew it when it is ours; step down when that cannot be confirmed."""
        began = self.clock()
        keys = [self.store.key("leader"), self.store.key("leader-epoch")]
        try:
            held, epoch, leader = await self.store.call(
                self._hold, keys=keys, args=[self.store.name, int(self.lease * 1000)]
            )
        except StoreUnavailable:
            self.leader = ""
            self._set(self.leading)  # keeps leading only while the last renewal still covers it
            return
        self.leader, self.epoch = leader.decode(), int(epoch)
        if held:
            self._valid_until = began + self.lease * 0.8
        self._set(bool(held))

    def _set(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            logger.info("this gateway (%s) leads the cluster now (epoch %d)", self.store.name, self.epoch)
        else:
            logger.warning("this gateway (%s) no longer leads the cluster", self.store.name)
        for callback in self.on_change:
            callback(leading)

    async def run(self) -> None:
        """Tick three times per lease until cancelled; at the end, give the lease up if it is ours."""
        try:
            while True:
                await self.tick()
                await asyncio.sleep(self.lease / 3)
        finally:
            if self._leading:
                self._set(False)
                with contextlib.suppress(StoreUnavailable):
                    await self.store.call(self._release, keys=[self.store.key("leader")], args=[self.store.name])
