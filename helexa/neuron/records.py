"""What the neuron knows of each model, and the one table its status changes along.

A :class:`ModelRecord` is one model's state (its spec, status, engine endpoint, plan, errors); :data:`TRANSITIONS`
is every change of status allowed, with the event each emits for the metrics. The manager
(:mod:`helexa.neuron.models`) is the only writer; everything else reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from helexa.engine.harness import PlacementPlan
from helexa.neuron.pulls import Pull
from helexa.wire.neuron import ModelInfo, ModelSpec, ModelStatus

__all__ = ["TRANSITIONS", "InvalidTransition", "ModelRecord", "Observer", "differences", "other_member"]

_WHAT_RUNS = ("harness", "source", "quant", "tensor_parallel", "devices", "options", "task")
_RUNNING = (ModelStatus.LOADED, ModelStatus.LOADING, ModelStatus.DOWNLOADING, ModelStatus.SLEEPING)


@dataclass
class ModelRecord:
    """What the neuron knows of one model."""

    spec: ModelSpec
    harness: str
    status: ModelStatus = ModelStatus.UNLOADED
    endpoint: str = ""
    plan: PlacementPlan = field(default_factory=PlacementPlan)
    last_error: str = ""
    in_flight: int = 0
    loaded_at: float = 0.0
    task: asyncio.Task[ModelRecord] | None = None
    merge_system: bool = False  # the engine refused late system messages: merge them (system_messages = auto)
    context_length: int = 0  # what the running engine says one request may use (asked once it serves)
    pull: Pull | None = None  # the download this load waits for

    def info(self) -> ModelInfo:
        """The wire view of this record."""
        return ModelInfo(
            id=self.spec.model_id,
            harness=self.harness,
            status=self.status,
            devices=list(self.plan.devices),
            vram_used_mb=self.plan.vram_mb if self.status == ModelStatus.LOADED and self.plan.devices else 0,
            last_error=self.last_error,
            in_flight=self.in_flight,
            loaded_at=self.loaded_at,
            download=self.pull.info() if self.pull is not None and self.status == ModelStatus.DOWNLOADING else None,
            rank=self.spec.rank,
            context_length=self.context_length if self.status == ModelStatus.LOADED else 0,
        )


Observer = Callable[[str, str, float], None]  # (event, model_id, seconds): "loaded", "crashed", "failed", …

_S = ModelStatus
#: Every change of a model's status, and the event it emits ("" = none; a caller may name one, as a refusal
#: does for loading -> unloaded). A change not in the table is a bug: :class:`InvalidTransition`.
TRANSITIONS: dict[ModelStatus, dict[ModelStatus, str]] = {
    _S.UNLOADED: {_S.LOADING: "", _S.DOWNLOADING: "", _S.UNLOADED: ""},
    _S.LOADING: {_S.DOWNLOADING: "", _S.LOADING: "", _S.LOADED: "loaded", _S.UNLOADED: "", _S.FAILED: "failed"},
    _S.DOWNLOADING: {_S.LOADING: "", _S.UNLOADED: "", _S.FAILED: "failed"},
    _S.LOADED: {_S.SLEEPING: "", _S.UNLOADED: "", _S.FAILED: "crashed"},
    _S.SLEEPING: {_S.LOADED: "woke", _S.UNLOADED: ""},
    _S.FAILED: {_S.UNLOADED: ""},
}


class InvalidTransition(RuntimeError):
    """A status change the table does not allow (a bug in the neuron, never the client's input)."""


def differences(running: ModelSpec, wanted: ModelSpec) -> str:
    """The fields that decide what runs and differ between two specs, as ``source ('a' vs 'b')``."""
    return ", ".join(
        f"{name} ({getattr(running, name)!r} vs {getattr(wanted, name)!r})"
        for name in _WHAT_RUNS
        if getattr(running, name) != getattr(wanted, name)
    )


def other_member(record: ModelRecord, spec: ModelSpec) -> str:
    """Why ``record`` cannot serve ``spec``: it runs (or loads) as another gang member than ``spec`` asks for,
    or alone where ``spec`` is a gang member, or the reverse. "" when it can."""
    if record.status not in _RUNNING:
        return ""
    mine, wanted = record.spec.rank, spec.rank
    if mine is None and wanted is None:
        return ""
    if mine is not None and wanted is not None and (mine.gang, mine.rank) == (wanted.gang, wanted.rank):
        return ""
    return f"model {spec.model_id!r} runs here as {_member(record.spec)}, not {_member(spec)}; unload it first"


def _member(spec: ModelSpec) -> str:
    rank = spec.rank
    return "a single-host model" if rank is None else f"rank {rank.rank} of {rank.size} in gang {rank.gang}"
