"""Per-key limits shared by every gateway of a cluster, each check one atomic script in the store.

The same rules as one gateway's (:mod:`helexa.server.keys`), kept in the store under the key's *name*:

- **requests per minute**: a token bucket (level and last refill, in the store's clock);
- **requests at once**: a sorted set of the requests in flight, each ``gateway|request``; a request of a gateway
  that stopped beating (it died) is dropped at the next check, so a crash never keeps a slot;
- **tokens per hour**: the hour's start and its use, plus what requests in flight reserved (a hash, each entry
  ``gateway|request`` -> tokens, dead gateways' dropped likewise); a request reserves before it is sent and
  settles at its end (its reservation replaced by what it used).

Scripts take the time from the store (``TIME``): gateways' clocks never need to agree. Results are plain data;
the key guard turns a refusal into its 429.
"""

from __future__ import annotations

from dataclasses import dataclass

from helexa.cluster.store import ClusterStore

__all__ = ["Refusal", "Reservation", "SharedLimits"]

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_HOUR = """
local start = tonumber(redis.call('HGET', KEYS[1], 'hour_start') or '0')
if now - start >= 3600000 then
  redis.call('HSET', KEYS[1], 'hour_start', now, 'hour_used', 0)
  start = now
end
local used = tonumber(redis.call('HGET', KEYS[1], 'hour_used') or '0')
"""
_ALIVE = """
local function alive(member)
  local gateway = string.match(member, '^(.*)|')
  local until_ = gateway and redis.call('ZSCORE', KEYS[3], gateway)
  return until_ and tonumber(until_) >= now
end
"""
# KEYS: state (hash), in flight (sorted set), gateways (sorted set); ARGV: rpm, at once, per hour, member
_ADMIT = (
    _NOW
    + _ALIVE
    + """
local rpm, most, per_hour = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if per_hour > 0 then
"""
    + _HOUR
    + """
  if used >= per_hour then return {'tokens_per_hour', 3600000 - (now - start)} end
end
if most > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
    if not alive(member) then redis.call('ZREM', KEYS[2], member) end
  end
  if redis.call('ZCARD', KEYS[2]) >= most then return {'max_concurrent', 1000} end
end
if rpm > 0 then
  local rate = rpm / 60000
  local level = tonumber(redis.call('HGET', KEYS[1], 'bucket') or ARGV[1])
  local refilled = tonumber(redis.call('HGET', KEYS[1], 'refilled') or tostring(now))
  level = math.min(rpm, level + (now - refilled) * rate)
  if level < 1 then
    redis.call('HSET', KEYS[1], 'bucket', tostring(level), 'refilled', now)
    return {'requests_per_minute', math.ceil((1 - level) / rate)}
  end
  redis.call('HSET', KEYS[1], 'bucket', tostring(level - 1), 'refilled', now)
end
if most > 0 then
  redis.call('ZADD', KEYS[2], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[2], 86400000)
end
redis.call('PEXPIRE', KEYS[1], 7200000)
return {'', 0}
"""
)
# KEYS: state, reservations (hash), gateways; ARGV: per hour, member, tokens
_RESERVE = (
    _NOW
    + _ALIVE
    + _HOUR
    + """
local reserved = 0
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  if alive(entries[i]) then
    reserved = reserved + tonumber(entries[i + 1])
  else
    redis.call('HDEL', KEYS[2], entries[i])
  end
end
local left = tonumber(ARGV[1]) - used - reserved
local tokens = tonumber(ARGV[3])
if tokens > left then return {0, left, reserved, 3600000 - (now - start)} end
redis.call('HSET', KEYS[2], ARGV[2], tokens)
redis.call('PEXPIRE', KEYS[2], 7200000)
redis.call('PEXPIRE', KEYS[1], 7200000)
return {1, left - tokens, reserved + tokens, 0}
"""
)
# KEYS: state, reservations, in flight; ARGV: member, tokens used, whether it reserved (1/0), whether it held a slot
_FINISH = (
    _NOW
    + """
if ARGV[4] == '1' then redis.call('ZREM', KEYS[3], ARGV[1]) end
if ARGV[3] ~= '1' then return 0 end
"""
    + _HOUR
    + """
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'hour_used', ARGV[2])
redis.call('PEXPIRE', KEYS[1], 7200000)
return used + tonumber(ARGV[2])
"""
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused (``requests_per_minute``, ``max_concurrent``, ``tokens_per_hour``) and when to
    retry (seconds)."""

    reason: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of a reservation: ``ok``; the tokens left this hour after it (before it, when refused); what
    requests in flight hold reserved; when to retry (seconds, when refused)."""

    ok: bool
    left: int
    reserved: int
    retry_after: float


class SharedLimits:
    """Limits by key name in ``store``; each method is one round trip.

    :raises helexa.cluster.store.StoreUnavailable: (every method) the store does not answer.
    """

    def __init__(self, store: ClusterStore) -> None:
        self.store = store
        self._admit = store.redis.register_script(_ADMIT)
        self._reserve = store.redis.register_script(_RESERVE)
        self._finish = store.redis.register_script(_FINISH)

    def member(self, request_id: str) -> str:
        """How a request of this gateway is named in the store (its gateway first: a dead one's are dropped)."""
        return f"{self.store.name}|{request_id}"

    def _keys(self, kind: str, name: str) -> list[str]:
        return [self.store.key("limit", "state", name), self.store.key("limit", kind, name), self.store.key("gateways")]

    async def admit(self, name: str, *, per_minute: int, at_once: int, per_hour: int, member: str) -> Refusal | None:
        """Count one request of key ``name`` (and hold a slot for ``member`` while ``at_once`` is set); a
        :class:`Refusal` when a limit is reached."""
        reason, retry_ms = await self.store.call(
            self._admit, keys=self._keys("flight", name), args=[per_minute, at_once, per_hour, member]
        )
        return Refusal(reason.decode(), int(retry_ms) / 1000) if reason else None

    async def reserve(self, name: str, *, per_hour: int, member: str, tokens: int) -> Reservation:
        """Reserve ``tokens`` of key ``name``'s hour for ``member`` (nothing when they do not fit)."""
        ok, left, reserved, retry_ms = await self.store.call(
            self._reserve, keys=self._keys("reserved", name), args=[per_hour, member, tokens]
        )
        return Reservation(bool(ok), int(left), int(reserved), int(retry_ms) / 1000)

    async def finish(self, name: str, member: str, *, used: int, reserved: bool, slot: bool) -> int:
        """``member`` ended (one round trip): its slot is free (``slot``), its reservation goes and the ``used``
        tokens count (``reserved``); the hour's use (0 when it reserved nothing)."""
        keys = [*self._keys("reserved", name)[:2], self.store.key("limit", "flight", name)]
        return int(await self.store.call(self._finish, keys=keys, args=[member, used, int(reserved), int(slot)]))
