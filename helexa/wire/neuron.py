"""Neuron control-API messages (gateway <-> neuron). Versioned by evolution: new fields always get defaults."""

from __future__ import annotations

from typing import Any

from helexa.wire import ModelId, WireStruct

__all__ = ["DeviceInfo", "ModelSpec"]


class DeviceInfo(WireStruct):
    """One accelerator as discovered on a neuron host."""

    index: int
    name: str = ""
    uuid: str = ""
    vram_total_mb: int = 0
    compute_capability: str = ""


class ModelSpec(WireStruct):
    """What to load: the body of ``POST /models/load`` and the argument every harness receives.

    ``harness``, ``source`` and ``quant`` empty mean "the neuron's default"; ``devices`` ``None`` means "let
    preflight choose"; ``options`` are harness-specific and validated against the harness's ``Options``.
    """

    model_id: ModelId
    harness: str = ""
    source: str = ""
    quant: str = ""
    tensor_parallel: int = 1
    devices: list[int] | None = None
    options: dict[str, Any] = {}
