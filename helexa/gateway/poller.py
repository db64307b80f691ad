"""Keeps the registry current: each neuron's /health and /models on an interval, /discovery when needed.

A request that cannot open a neuron's answer makes it suspect and wakes its poller (it is checked at once). A
neuron that fails a poll (no answer within ``neuron_timeout_seconds``) is marked down — the requests in
flight through it are ended, so a hung host costs a client at most about ``poll_interval + neuron_timeout`` —
and polled again with exponential backoff (up to :data:`MAX_BACKOFF_S`); the first answer marks it healthy
again. Discovery is read at start and again
whenever a neuron comes back or its uptime went backwards (it restarted, possibly upgraded). Models that a
neuron no longer reports vanish from the registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from helexa.errors import HelexaError
from helexa.gateway.neuron_client import NeuronClient
from helexa.gateway.registry import NeuronState
from helexa.server.aio import wait_set

__all__ = ["MAX_BACKOFF_S", "poll_forever", "poll_once"]

logger = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0


async def poll_once(state: NeuronState, client: NeuronClient) -> bool:
    """One poll of one neuron; update ``state``. Return whether the neuron answered."""
    try:
        health = await client.health()
        restarted = state.health is not None and health.uptime_s < state.health.uptime_s
        if state.discovery is None or not state.healthy or restarted:
            state.discovery = await client.discovery()
        models = await client.models()
    except HelexaError as exc:
        if state.healthy or state.failures == 0:
            logger.warning("neuron %s is unreachable: %s", state.name, exc.message)
        state.mark_down(exc.message)
        state.failures += 1
        return False
    if not state.healthy:
        logger.info("neuron %s is up (%d devices)", state.name, len(state.discovery.devices))
    state.health, state.healthy, state.failures, state.last_error, state.suspect = health, True, 0, "", ""
    state.reported(models)
    return True


async def poll_forever(
    state: NeuronState, client: NeuronClient, interval: float, on_poll: Callable[[NeuronState], None] | None = None
) -> None:
    """Poll ``state``'s neuron until cancelled."""
    while True:
        await poll_once(state, client)
        if on_poll is not None:
            on_poll(state)
        delay = interval if state.healthy else min(interval * 2 ** min(state.failures - 1, 10), MAX_BACKOFF_S)
        state.probe.clear()
        await wait_set(state.probe, delay)  # a request that found it suspect has it checked at once
