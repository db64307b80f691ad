"""A gateway cut off from the store by the network (not stopped): the others take over, it stops placing.

The leader runs in a network namespace of its own — another "host" with its own addresses — with one link to the
neurons and clients and one to the store. ``ip link set down`` on its store link drops every packet, no reset:
what a switch port or a firewall does. What an operator expects: another gateway leads within 5 s; the cut one
steps down by itself (its lease runs out in its own clock before the store's key does), keeps serving the loaded
model, answers a cold load with a 503 at once and starts no load; the link back, it rejoins as a follower and no
model was loaded twice.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from tests.cluster.conftest import RedisServer
from tests.cluster.fleet import (
    GEMMA,
    SMOL,
    ask,
    chat,
    fleet_report,
    loads,
    start_gateway,
    start_neurons,
    until_agreed,
)
from tests.tools import debian_tool

pytestmark = pytest.mark.timeout(600)


async def test_a_leader_cut_off_from_the_store_steps_down(
    tmp_path, helexa_process, other_host, demo_models_dir, smollm2_gguf
):
    store = RedisServer(
        debian_tool("redis-server", "redis-server"),
        tmp_path,
        binds=("127.0.0.1", other_host.here["store"]),
        password="store-secret",
    )
    store.start()
    try:
        await _partition(
            tmp_path, helexa_process, other_host, store, [demo_models_dir, smollm2_gguf.parent], smollm2_gguf.name
        )
    finally:
        store.stop()


async def _partition(tmp_path, helexa_process, host, store, model_dirs, smol_file) -> None:
    neurons = start_neurons(helexa_process, tmp_path, model_dirs, smol_file, host.here["data"])
    far_store = store.url_at(host.here["store"])
    cut_url, cut_proc = start_gateway(
        helexa_process, tmp_path, "far", far_store, neurons, host=host.there["data"], wrap=host.wrap
    )
    until_agreed([cut_url], helexa_process, [cut_proc], leader="far")  # the far gateway leads
    near = [start_gateway(helexa_process, tmp_path, f"near{i}", store.url, neurons) for i in range(2)]
    urls = [cut_url] + [url for url, _ in near]
    until_agreed(urls, helexa_process, [cut_proc] + [p for _, p in near], leader="far")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        assert await ask(session, cut_url, SMOL) == 200  # placed by the far leader
        assert loads(neurons, SMOL) == 1

        host.cut("store")
        cut_at = time.monotonic()
        new_leader = ""
        while not new_leader:
            assert time.monotonic() - cut_at < 5, "no new leader within 5 s of the cut"
            report = (await fleet_report(session, near[0][0]))["cluster"]
            if report["leader"].startswith("near"):
                new_leader = report["leader"]
            else:
                await _pause()
        print(f"a new leader ({new_leader}) {time.monotonic() - cut_at:.2f} s after the cut")
        # the cut gateway knows it no longer leads, and that the store is gone
        while (report := (await fleet_report(session, cut_url))["cluster"])["store_up"] or report["leading"]:
            assert time.monotonic() - cut_at < 10, report
            await _pause()
        print(f"the cut gateway stepped down and saw the store gone {time.monotonic() - cut_at:.2f} s after the cut")
        # it serves the loaded model, and answers a cold load at once without starting one
        began = time.monotonic()
        assert await ask(session, cut_url, SMOL) == 200
        status, answer = await chat(session, cut_url, GEMMA)
        assert status == 503 and answer["error"]["code"] == "store_unavailable", answer
        assert time.monotonic() - began < 5
        # a cold load through the new leader: placed once
        near_url = dict(zip([f"near{i}" for i in range(2)], [u for u, _ in near], strict=True))[new_leader]
        assert await ask(session, near_url, GEMMA) == 200
        assert loads(neurons, GEMMA) == 1

        host.mend("store")
        mended_at = time.monotonic()
        while not (report := (await fleet_report(session, cut_url))["cluster"])["store_up"] or (
            report["leader"] != new_leader
        ):
            assert time.monotonic() - mended_at < 15, report
            await _pause()
        assert not report["leading"]
        print(f"the cut gateway a follower of {new_leader} {time.monotonic() - mended_at:.2f} s after the mend")
        # a follower again: the model the new leader loaded answers through it, nothing loaded twice
        assert await ask(session, cut_url, GEMMA) == 200
        assert (loads(neurons, SMOL), loads(neurons, GEMMA)) == (1, 1)
        for url in urls:
            assert (await fleet_report(session, url))["cluster"]["leader"] == new_leader
    log = helexa_process.output(cut_proc)
    assert re.search(r"this gateway \(far\) no longer leads the cluster", log), log[-3000:]


async def _pause() -> None:
    await asyncio.sleep(0.1)
