"""A neuron's part in gangs: whether it may serve a rank, and the head's torch.distributed port.

A gang is one model over several neurons on the engine's own multi-node runtime (vLLM). The gateway names the
gang, the ranks and the peers' addresses; a neuron admits a rank only when ``[neuron] multi_host`` is on, the
harness declares ``multi_host``, every address is an IP literal (they become the engine's argv and
environment) among ``gang_peers`` (required: with none, no rank is admitted), this neuron's own
``advertise_address`` is the rank's
peer, and a follower's engine versions equal the head's exactly. The head's neuron reserves the master port on
its advertise address and reports it with its versions; the rank ports' traffic is unauthenticated, so they
are bound nowhere else.

:func:`check_rank` is pure (table-tested); :class:`Gangs` adds the port reservations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from helexa.engine.ports import PortAllocator
from helexa.errors import PreflightError
from helexa.wire import is_ip_address
from helexa.wire.neuron import ModelSpec, RankSpec

__all__ = ["GangSettings", "Gangs", "check_rank"]

_GANG_ID = re.compile(r"[0-9a-f]{4,32}")
MAX_HOSTS = 64


@dataclass(frozen=True, slots=True)
class GangSettings:
    """The neuron's ``[neuron]`` gang settings."""

    multi_host: bool = False
    advertise_address: str = ""
    gang_peers: tuple[str, ...] = ()
    rank_port_range: tuple[int, int] = (29500, 29599)


def check_rank(spec: ModelSpec, *, harness: str, multi_host_harness: bool, settings: GangSettings) -> None:
    """Refuse a load that this neuron may not serve as a gang member (or that needs a gang and has no rank).

    :raises PreflightError: ``needs_gang`` (``hosts`` > 1 without a rank: load it through the gateway),
        ``multi_host_off``, ``multi_host_unsupported`` (the harness cannot), ``invalid_rank`` (the rank, size,
        gang id or an address is malformed), ``peer_not_allowed``.
    """
    rank, model = spec.rank, spec.model_id
    if rank is None:
        if spec.hosts > 1:
            raise PreflightError(
                "needs_gang",
                model,
                f"model {model!r} spans {spec.hosts} hosts: one neuron cannot load it alone",
                "load it through the gateway, which places its ranks on several neurons",
            )
        return
    if not settings.multi_host:
        raise PreflightError(
            "multi_host_off",
            model,
            "this neuron does not join gangs ([neuron] multi_host = false)",
            "set [neuron] multi_host = true and advertise_address on the hosts meant to share models",
        )
    if not multi_host_harness:
        raise PreflightError(
            "multi_host_unsupported",
            model,
            f"harness {harness!r} cannot run a model across hosts",
            "use a harness that supports several hosts (vllm), or hosts = 1",
        )
    if not 2 <= rank.size <= MAX_HOSTS or not 0 <= rank.rank < rank.size or rank.size != spec.hosts:
        raise PreflightError(
            "invalid_rank",
            model,
            f"rank {rank.rank} of {rank.size} does not fit a model of {spec.hosts} hosts",
            f"ranks run from 0 to hosts - 1; the size is the model's hosts (2 to {MAX_HOSTS})",
        )
    if not _GANG_ID.fullmatch(rank.gang):
        raise PreflightError("invalid_rank", model, "the gang id must be 4 to 32 lower-case hex digits")
    addresses = [*rank.peers, *([rank.master_addr] if rank.master_addr else [])]
    bad = next((a for a in addresses if not is_ip_address(a)), None)
    if len(rank.peers) != rank.size or bad is not None:
        what = f"{bad[:64]!r} is not an IP address" if bad is not None else f"{len(rank.peers)} peers"
        raise PreflightError("invalid_rank", model, f"a gang of {rank.size} needs one IP address per rank: {what}")
    if rank.peers[rank.rank] != settings.advertise_address:
        raise PreflightError(
            "invalid_rank",
            model,
            f"rank {rank.rank} is to run on {rank.peers[rank.rank]}, but this neuron advertises "
            f"{settings.advertise_address}",
            "check [neuron] advertise_address",
        )
    if not rank.head and (not rank.master_addr or not 1 <= rank.master_port <= 65535):
        raise PreflightError("invalid_rank", model, "a follower rank needs the head's master_addr and master_port")
    if not rank.head and rank.master_addr != rank.peers[0]:
        raise PreflightError("invalid_rank", model, "the master address must be the head's (rank 0's) address")
    if not settings.gang_peers:
        raise PreflightError(
            "peer_not_allowed",
            model,
            "this neuron has no gang_peers: it joins no gang (the ranks' ports are unauthenticated)",
            "list the IP addresses of the hosts it may share models with in [neuron] gang_peers",
        )
    if strangers := [a for a in rank.peers if a not in settings.gang_peers]:
        raise PreflightError(
            "peer_not_allowed",
            model,
            f"{strangers[0]} is not among this neuron's gang_peers",
            "add it to [neuron] gang_peers, or let the gateway choose other neurons",
        )


def check_versions(model_id: str, ours: dict[str, str], head: dict[str, str]) -> None:
    """A follower's engine versions must be the head's, exactly (a mismatch fails deep inside the runtime).

    :raises PreflightError: ``version_mismatch`` naming the first difference.
    """
    for name in sorted(set(ours) | set(head)):
        if ours.get(name) != head.get(name):
            raise PreflightError(
                "version_mismatch",
                model_id,
                f"{name} here is {ours.get(name) or 'missing'!r}, the gang's head runs {head.get(name) or 'none'!r}",
                "install the same engine and torch versions on every host of a gang",
            )


class Gangs:
    """Admits ranks (:func:`check_rank`) and reserves the head's master ports on the advertise address."""

    def __init__(self, settings: GangSettings) -> None:
        self.settings = settings
        first, last = settings.rank_port_range
        self._ports = PortAllocator(first, last, host=settings.advertise_address or "127.0.0.1")

    def admit(self, spec: ModelSpec, *, harness: str, multi_host_harness: bool, versions: dict[str, str]) -> ModelSpec:
        """``spec`` as this neuron will run it: a head's rank gains its master address, port and versions.

        :raises PreflightError: see :func:`check_rank`, and ``version_mismatch``; ``no_rank_port`` when the
            rank port range is used up.
        """
        check_rank(spec, harness=harness, multi_host_harness=multi_host_harness, settings=self.settings)
        rank = spec.rank
        if rank is None:
            return spec
        if not rank.head:
            check_versions(spec.model_id, versions, rank.versions)
            return spec
        try:
            port = self._ports.allocate()
        except OSError as exc:
            raise PreflightError(
                "no_rank_port", spec.model_id, str(exc), "widen [neuron] rank_port_range or unload a gang"
            ) from None
        completed = msgspec.structs.replace(
            rank, master_addr=self.settings.advertise_address, master_port=port, versions=versions
        )
        return msgspec.structs.replace(spec, rank=completed)

    def release(self, rank: RankSpec | None) -> None:
        """Return a head's master port (a no-op for anything else)."""
        if rank is not None and rank.head and rank.master_port:
            self._ports.release(rank.master_port)
