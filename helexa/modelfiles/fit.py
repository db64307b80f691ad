"""Whether a model fits a host's memory, and where: the one memory-fit function.

Both checks of a load use it — the neuron's look before a download (a repository's listing and shape, against the
host as it is or empty) and the harness's preflight (the files on disk) — so they cannot disagree: the same weights,
KV cache, copies of it and, for one member of a gang, the same share of the model.

:raises helexa.errors.PreflightError: ``tensor_parallel``, ``device_not_found``, ``insufficient_vram`` or
    ``insufficient_memory``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from helexa.errors import PreflightError
from helexa.modelfiles.shape import Shape, kv_cache_bytes, needed_mb

__all__ = ["MIN_AUTO_CONTEXT", "Device", "Fit", "auto_contexts", "choose_devices", "fit_model"]

MIN_AUTO_CONTEXT = 4096  # the smallest context an automatic choice settles for (agents need more: docs/clients.md)
_TOO_BIG = ("insufficient_vram", "insufficient_memory")


@dataclass(frozen=True, slots=True)
class Fit:
    """Where a model fits: ``devices`` (empty: CPU), the memory it needs there in MiB (its share, for a gang
    member), and ``context``: the context an automatic choice settled on (0: as configured, or the engine's)."""

    devices: tuple[int, ...]
    needed_mb: int
    context: int = 0


def auto_contexts(trained: int) -> list[int]:
    """The contexts an automatic choice tries, largest first: the trained one, then halvings down to
    :data:`MIN_AUTO_CONTEXT` (``[0]``, the engine's own, when the trained context is unknown)."""
    if trained <= 0:
        return [0]
    out = [trained]
    while out[-1] // 2 >= MIN_AUTO_CONTEXT:
        out.append(out[-1] // 2)
    return out


def fit_model(
    model_id: str,
    *,
    weight_bytes: int,
    vram_mb: int,
    shape: Shape | None,
    context: int,
    auto_context: bool,
    kv_copies: int,
    share: int,
    gpus: Sequence[Device],
    ram_available_mb: int,
    tensor_parallel: int,
    requested: Sequence[int] | None,
    cpu_ok: bool,
) -> Fit:
    """Where ``model_id`` fits: its weights (``weight_bytes``; or ``vram_mb`` when the catalogue states it), plus
    the KV cache of ``context`` tokens (from its ``shape``, when known) times ``kv_copies``, divided by ``share``
    (a gang of that many hosts: each member holds its part). With ``auto_context`` (no context configured, the
    shape known) the largest of the trained context and its halvings that fits is chosen.

    :raises PreflightError: it does not fit (with the smallest context tried), or the devices asked for are wrong.
    """
    contexts = auto_contexts(shape.trained_context) if auto_context and shape is not None else [context]
    for attempt, tried in enumerate(contexts, start=1):
        kv = kv_cache_bytes(shape, tried) * kv_copies if shape is not None else None
        needed = -(-needed_mb(weight_bytes, vram_mb, kv) // max(1, share))
        try:
            devices = choose_devices(
                model_id,
                gpus,
                needed_mb=needed,
                tensor_parallel=tensor_parallel,
                requested=requested,
                ram_available_mb=ram_available_mb,
                cpu_ok=cpu_ok,
            )
        except PreflightError as exc:  # too big with this context: the next, smaller one may fit
            if attempt == len(contexts) or exc.kind not in _TOO_BIG:
                raise
            continue
        return Fit(devices, needed, tried if auto_context and shape is not None else 0)
    raise AssertionError("unreachable: the last context returns or raises")


class Device(Protocol):
    """What device choice reads of a GPU (the harness contract's ``GpuState`` has it)."""

    index: int
    name: str
    vram_free_mb: int


def choose_devices(
    model_id: str,
    gpus: Sequence[Device],
    *,
    needed_mb: int,
    tensor_parallel: int,
    requested: Sequence[int] | None,
    ram_available_mb: int,
    cpu_ok: bool,
) -> tuple[int, ...]:
    """Choose the devices a model runs on (empty tuple = CPU), checking count and free memory.

    ``needed_mb`` is split evenly over ``tensor_parallel`` devices; without a request the devices with the
    most free memory win. On a host without GPUs a CPU-capable harness runs the model in RAM.

    :raises PreflightError: ``tensor_parallel``, ``device_not_found``, ``insufficient_vram`` or
        ``insufficient_memory``.
    """
    if not gpus and not requested:
        if tensor_parallel > 1:
            raise PreflightError(
                "tensor_parallel",
                model_id,
                f"tensor_parallel = {tensor_parallel} needs {tensor_parallel} GPUs; this host has none",
                "use tensor_parallel = 1 or place it on a GPU host",
            )
        if not cpu_ok:
            raise PreflightError(
                "insufficient_vram",
                model_id,
                "this host has no GPU and the harness cannot run on CPU",
                "place the model on a GPU host",
            )
        if needed_mb > ram_available_mb:
            raise PreflightError(
                "insufficient_memory",
                model_id,
                f"needs {needed_mb} MiB of RAM, {ram_available_mb} MiB available",
                "free memory or use a smaller quantisation",
            )
        return ()
    by_index = {g.index: g for g in gpus}
    if requested:
        missing = [i for i in requested if i not in by_index]
        if missing:
            raise PreflightError(
                "device_not_found",
                model_id,
                f"no device {missing[0]} on this host (devices: {sorted(by_index)})",
                "request existing device indices",
            )
        if len(requested) != tensor_parallel:
            raise PreflightError(
                "tensor_parallel",
                model_id,
                f"tensor_parallel = {tensor_parallel} but {len(requested)} devices were requested",
                "request as many devices as the tensor-parallel size",
            )
        chosen = [by_index[i] for i in requested]
    else:
        if tensor_parallel > len(gpus):
            raise PreflightError(
                "tensor_parallel",
                model_id,
                f"tensor_parallel = {tensor_parallel} but this host has {len(gpus)} GPU(s)",
                f"use tensor_parallel <= {len(gpus)} or a larger host",
            )
        chosen = sorted(gpus, key=lambda g: g.vram_free_mb, reverse=True)[:tensor_parallel]
    per_device = -(-needed_mb // tensor_parallel)
    short = [g for g in chosen if g.vram_free_mb < per_device]
    if short:
        g = short[0]
        raise PreflightError(
            "insufficient_vram",
            model_id,
            f"needs {per_device} MiB on each of {tensor_parallel} device(s); "
            f"device {g.index} ({g.name}) has {g.vram_free_mb} MiB free",
            "unload another model, use a smaller quantisation, or raise tensor_parallel",
        )
    return tuple(sorted(g.index for g in chosen))
