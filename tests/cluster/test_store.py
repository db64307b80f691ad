"""The cluster primitives against a real Redis server: live gateways, the lease, shared limits, the exchange, and
what happens when the store goes away and comes back."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from helexa.cluster.exchange import Exchange
from helexa.cluster.lease import Leadership
from helexa.cluster.limits import SharedLimits
from helexa.cluster.store import ClusterStore, StoreUnavailable, redact
from tests.conftest import free_port, until


@pytest.fixture
async def stores(redis_server):
    """``stores(n)`` -> n ClusterStores on the server, named g0..g(n-1), each beaten once; closed at the end."""
    made: list[ClusterStore] = []

    async def make(n: int, prefix: str = "t") -> list[ClusterStore]:
        batch = [ClusterStore(redis_server.url, prefix=prefix, name=f"g{len(made) + i}") for i in range(n)]
        made.extend(batch)
        for store in batch:
            await store.beat()
        for store in batch:
            await store.beat()  # everyone sees everyone
        return batch

    yield make
    for store in made:
        await store.close()


async def test_gateways_see_each_other_and_a_silent_one_leaves(stores):
    a, _, c = await stores(3)
    assert a.peers == ("g0", "g1", "g2") and a.members == 3
    await c.leave()
    assert await a.beat() == ("g0", "g1")
    # g1 stops beating: after ALIVE_S it is gone for the others (its requests' slots with it)
    async with asyncio.timeout(5):
        while await a.beat() != ("g0",):  # noqa: ASYNC110  (the store's clock decides)
            await asyncio.sleep(0.1)


async def test_one_leader_at_a_time_and_a_successor_when_it_dies(stores):
    a, b = await stores(2)
    la, lb = Leadership(a, 1.0), Leadership(b, 1.0)
    await la.tick()
    await lb.tick()
    assert la.leading and not lb.leading and lb.leader == "g0" and la.epoch == 1
    for _ in range(3):  # renewals keep it
        await la.tick()
        await lb.tick()
    assert la.leading and not lb.leading
    began = asyncio.get_running_loop().time()
    # a dies (stops renewing): b takes over once the lease expired, with a new epoch
    while not lb.leading:
        await asyncio.sleep(0.1)
        await lb.tick()
    assert 0.5 < asyncio.get_running_loop().time() - began <= 1.5
    assert lb.epoch == 2 and lb.leader == "g1"
    await la.tick()
    assert not la.leading and la.leader == "g1"  # the old one sees it lost


async def test_a_leader_cut_off_from_the_store_steps_down_by_itself(stores, redis_server):
    (a,) = await stores(1)
    lease = Leadership(a, 1.0)
    await lease.tick()
    assert lease.leading
    redis_server.stop()
    await lease.tick()  # no answer: still covered by the last renewal
    assert lease.leading and not a.up
    await asyncio.sleep(0.85)
    assert not lease.leading  # 0.8 of the lease after its last renewal began, it stopped placing


async def test_limits_hold_across_gateways(stores):
    """R gateways must not admit R times the limit: three gateways, one key limited to 5 requests a minute, 2 at
    once and 100 tokens an hour, share each limit."""
    gateways = await stores(3)
    limits = [SharedLimits(g) for g in gateways]
    admitted = []
    for i in range(9):
        lim = limits[i % 3]
        refusal = await lim.admit("k", per_minute=5, at_once=0, per_hour=0, member=lim.member(f"r{i}"))
        admitted.append(refusal is None)
    assert admitted.count(True) == 5
    refused = await limits[0].admit("k", per_minute=5, at_once=0, per_hour=0, member=limits[0].member("x"))
    assert refused is not None and refused.reason == "requests_per_minute" and 0 < refused.retry_after <= 12

    one, two = limits[0].member("a"), limits[1].member("b")
    assert await limits[0].admit("c", per_minute=0, at_once=2, per_hour=0, member=one) is None
    assert await limits[1].admit("c", per_minute=0, at_once=2, per_hour=0, member=two) is None
    refused = await limits[2].admit("c", per_minute=0, at_once=2, per_hour=0, member=limits[2].member("c"))
    assert refused is not None and refused.reason == "max_concurrent"
    await limits[0].finish("c", one, used=0, reserved=False, slot=True)
    assert await limits[2].admit("c", per_minute=0, at_once=2, per_hour=0, member=limits[2].member("c")) is None

    first = await limits[0].reserve("t", per_hour=100, member=limits[0].member("1"), tokens=60)
    second = await limits[1].reserve("t", per_hour=100, member=limits[1].member("2"), tokens=60)
    assert first.ok and first.left == 40
    assert not second.ok and second.left == 40 and second.reserved == 60
    # used 10 of the 60 it reserved
    assert await limits[0].finish("t", limits[0].member("1"), used=10, reserved=True, slot=False) == 10
    assert (await limits[1].reserve("t", per_hour=100, member=limits[1].member("2"), tokens=60)).ok
    refused = await limits[2].admit("t", per_minute=0, at_once=0, per_hour=10, member=limits[2].member("z"))
    assert refused is not None and refused.reason == "tokens_per_hour"


async def test_a_dead_gateways_slots_and_reservations_are_freed(stores):
    a, b = await stores(2)
    la, lb = SharedLimits(a), SharedLimits(b)
    assert await lb.admit("k", per_minute=0, at_once=1, per_hour=0, member=lb.member("r")) is None
    assert (await lb.reserve("k", per_hour=100, member=lb.member("r"), tokens=100)).ok
    assert (await la.admit("k", per_minute=0, at_once=1, per_hour=0, member=la.member("s"))) is not None
    await b.leave()  # b died (or stopped beating for ALIVE_S): what it held is freed at the next check
    await a.beat()
    assert await la.admit("k", per_minute=0, at_once=1, per_hour=0, member=la.member("s")) is None
    assert (await la.reserve("k", per_hour=100, member=la.member("s"), tokens=100)).ok


async def test_the_exchange_carries_records_values_and_events(stores):
    a, b = await stores(2)
    xa, xb = Exchange(a), Exchange(b)
    heard: list[tuple[str, str]] = []
    listening = asyncio.create_task(xa.listen(lambda topic, sender: heard.append((topic, sender))))
    await asyncio.sleep(0.2)  # subscribed
    await xb.put_mine("needs", {"1": b"m1", "2": b"m2"})
    assert await xa.gather("needs") == {"g1": {"1": b"m1", "2": b"m2"}}
    await xb.put_mine("needs", {})
    assert await xa.gather("needs") == {}
    await xa.put("plan", b"p", 5)
    assert await xb.get("plan") == b"p"
    await xa.note("verdicts", "m", b"v", 5)
    assert await xb.notes("verdicts") == {"m": b"v"}
    await xb.send("needs")
    await until(lambda: ("needs", "g1") in heard, 5, "the event")
    listening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listening


async def test_the_store_going_away_is_an_error_then_it_comes_back(stores, redis_server):
    (a,) = await stores(1)
    changes: list[bool] = []
    a.on_change.append(changes.append)
    redis_server.stop()
    with pytest.raises(StoreUnavailable) as refused:
        await a.beat()
    assert refused.value.status == 503 and not a.up and changes == [False]
    ran: list[str] = []

    async def later() -> None:
        ran.append("flushed")

    a.when_up(later)
    redis_server.start()
    await a.beat()
    await until(lambda: ran == ["flushed"], 5, "what waited for the store")
    assert a.up and changes == [False, True]


def test_the_password_never_shows():
    assert redact("redis://:s3cret@db:6379/0") == "redis://:***@db:6379/0"
    assert redact("redis://user:s3cret@db:6379/0") == "redis://user:***@db:6379/0"
    assert redact("redis://db:6379/0") == "redis://db:6379/0"


async def test_a_store_never_reached_is_said_in_the_log_once(caplog):
    store = ClusterStore(f"redis://:nope@127.0.0.1:{free_port()}/0", prefix="t", name="g0")  # nothing listens
    try:
        with caplog.at_level("WARNING", logger="helexa.cluster.store"):
            for _ in range(3):
                with pytest.raises(StoreUnavailable):
                    await store.beat()
        said = [r.getMessage() for r in caplog.records if "does not answer" in r.getMessage()]
        assert len(said) == 1 and ":***@" in said[0] and "nope" not in said[0], said
    finally:
        await store.close()
