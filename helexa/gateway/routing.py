"""Which neuron serves a request: a replica that has the model loaded — the least busy, or the one that served
the conversation last (prefix affinity). While nothing waits for capacity, that is all (the fast path), and with
the ``swap-aware`` policy a request for a model whose replica takes requests (it does not drain) goes at once even
while others wait — what the policy would decide. Any other request waits its turn in the scheduler's queue
(:mod:`helexa.gateway.queue`), which loads and swaps models.

At start-up a request waits (at most :data:`FIRST_POLL_WAIT_S`) for every neuron's first poll, so it does not
see an empty fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict

from helexa.errors import HelexaError, NotFound
from helexa.gateway.affinity import Conversation
from helexa.gateway.lifecycle import Lifecycle, NoCapacity
from helexa.gateway.placement import pick_replica
from helexa.gateway.queue import ANONYMOUS, Client, Scheduler
from helexa.gateway.registry import NeuronState, Registry

__all__ = ["AFFINITY_ENTRIES", "FIRST_POLL_WAIT_S", "Router", "first_round"]

AFFINITY_ENTRIES = 8192  # conversations remembered for prefix affinity
FIRST_POLL_WAIT_S = 15.0  # longest a request waits, at start-up, for the first poll of every neuron


def _not_found(registry: Registry, requested: str) -> HelexaError:
    """404 for a model nobody knows; 503 for one that neurons which do not answer now hold (never a 404: it is
    there, and will be again)."""
    holders = registry.holders(registry.resolve(requested))
    if holders:
        return NoCapacity(
            f"model {requested!r} is loaded only on neuron(s) {', '.join(holders)}, which do not answer now; retry "
            "shortly",
            headers={"Retry-After": "5"},
        )
    return NotFound(
        f"model {requested!r} not found: it is not in the catalogue and not loaded on any healthy neuron; "
        "GET /v1/models lists the models",
        param="model",
        code="model_not_found",
    )


async def first_round(registry: Registry) -> None:
    """Wait (briefly) until every neuron was polled once since start, so answers reflect the fleet."""
    if registry.first_round.is_set():
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(registry.first_round.wait(), FIRST_POLL_WAIT_S)


class Router:
    """Picks the neuron for each request (``affinity``: prefix affinity on); ``queue`` is the scheduler's."""

    def __init__(self, registry: Registry, lifecycle: Lifecycle, queue: Scheduler, *, affinity: bool = True) -> None:
        self.registry, self.lifecycle, self.queue, self.affinity = registry, lifecycle, queue, affinity
        self._affinity: OrderedDict[tuple[str, str], str] = OrderedDict()  # (model, conversation) -> neuron

    def choose(
        self, model_id: str, exclude: frozenset[str] = frozenset(), conversation: Conversation | None = None
    ) -> NeuronState | None:
        """The least busy healthy neuron that has ``model_id`` loaded (not in ``exclude``), or the one that
        served ``conversation`` last unless it is much busier (prefix affinity)."""
        replicas = [n for n in self.registry.replicas(model_id) if n.name not in exclude]
        if len(replicas) > 1 and any(n.suspect for n in replicas):  # one a request could not open: others first
            replicas = [n for n in replicas if not n.suspect] or replicas
        if len(replicas) <= 1:
            return replicas[0] if replicas else None
        preferred = None
        if conversation is not None and self.affinity:
            preferred = self._affinity.get((model_id, conversation.key))
        # this gateway's requests in flight plus what the engine itself reports as queued
        loads = [(n.name, n.in_flight.get(model_id, 0) + n.models[model_id].waiting) for n in replicas]
        return self.registry.neurons[pick_replica(loads, preferred)]

    def remember(self, model_id: str, conversation: Conversation | None, neuron: str) -> None:
        """Note that ``neuron`` served ``conversation`` of ``model_id`` (bounded, oldest forgotten); only where
        routing had a choice to make."""
        if conversation is None or not conversation.keyed:
            return
        key = (model_id, conversation.key)
        self._affinity[key] = neuron
        self._affinity.move_to_end(key)
        while len(self._affinity) > AFFINITY_ENTRIES:
            self._affinity.popitem(last=False)

    async def check(self, requested: str) -> str:
        """The model id for ``requested`` (an id or alias) when it can be served, without loading anything.

        Streaming routes call it before they open the response, so an unknown model is still a plain 404.

        :raises NotFound: the model is neither in the catalogue nor loaded on a healthy neuron.
        """
        model_id = self.registry.resolve(requested)
        await first_round(self.registry)
        if model_id not in self.registry.catalogue and not self.registry.replicas(model_id):
            raise _not_found(self.registry, requested)
        return model_id

    async def route(
        self, requested: str, conversation: Conversation | None = None, client: Client = ANONYMOUS
    ) -> tuple[str, NeuronState]:
        """``(model id, neuron)`` to serve ``requested`` (an id or alias) for ``client``, waiting in the scheduler's
        queue when the model is not served now or others wait; ``conversation`` is for prefix affinity (see
        :meth:`choose`).

        :raises NotFound: the model is neither in the catalogue nor loaded anywhere.
        :raises Overloaded: too many requests of this key wait for the model, or it took too long.
        :raises NoCapacity: no neuron can take it, even after evictions.
        """
        model_id = self.registry.resolve(requested)
        await first_round(self.registry)
        queue = self.queue
        if not queue.active:
            state = self.choose(model_id, conversation=conversation)
            if state is not None:
                return model_id, state
        elif queue.policy.mode == "swap-aware":  # what the policy would do: a replica that takes requests, at once
            state = self.choose(model_id, queue.held_for(model_id), conversation)
            if state is not None:
                return model_id, state
        if model_id not in self.registry.catalogue and not self.registry.replicas(model_id):
            raise _not_found(self.registry, requested)
        preferred = ""
        if conversation is not None and self.affinity:
            preferred = self._affinity.get((model_id, conversation.key), "")
        for _ in range(3):
            neuron = await queue.wait(model_id, client, preferred)  # the replica the policy admitted it to
            state = self.registry.neurons[neuron]
            if state in self.registry.replicas(model_id) and neuron not in queue.leaving(model_id):
                return model_id, state
        raise NoCapacity(
            f"model {model_id!r} kept moving while this request waited; retry", headers={"Retry-After": "5"}
        )
