"""Neuron control-API messages (gateway <-> neuron). Versioned by evolution: new fields always get defaults.

Reports people read with curl (discovery, health, model lists) encode every field, defaults included;
requests keep the base's ``omit_defaults``.
"""

from __future__ import annotations

import enum
from typing import Any, Literal

import msgspec

from helexa.wire import ModelId, WireStruct

# Sent by a gateway with every request it relays: it places the models itself (one placer for the fleet), so the
# neuron never loads one on demand for it — a model it does not hold is its 404 ``model_not_found``, and the
# gateway routes the request again.
PLACER_HEADER = "x-helexa-placer"

__all__ = [
    "AUTO_HARNESS",
    "PLACER_HEADER",
    "RESIDENT",
    "DeviceHealth",
    "DeviceInfo",
    "Discovery",
    "DownloadInfo",
    "EndpointInfo",
    "HostInfo",
    "LoadRequest",
    "LoadResponse",
    "ModelInfo",
    "ModelList",
    "ModelSpec",
    "ModelStatus",
    "NeuronHealth",
    "PreflightErrorBody",
    "PreflightErrorInfo",
    "PullRequest",
    "PullResponse",
    "RankSpec",
    "UnloadRequest",
]


#: A harness name that leaves the choice to the neuron (``default_harness = "auto"``).
AUTO_HARNESS = "auto"


class DeviceInfo(WireStruct, omit_defaults=False):
    """One accelerator as discovered on a neuron host."""

    index: int
    name: str = ""
    uuid: str = ""
    vram_total_mb: int = 0
    compute_capability: str = ""


class HostInfo(WireStruct, omit_defaults=False):
    """Facts about the host itself (what a CPU-only neuron has to offer)."""

    cpu_count: int = 0
    ram_total_mb: int = 0
    ram_available_mb: int = 0


class Discovery(WireStruct, omit_defaults=False):
    """``GET /discovery``: what this neuron is and has. Changes only when the neuron restarts."""

    hostname: str
    os: str = ""
    kernel: str = ""
    driver_version: str = ""
    cuda_version: str = ""
    devices: list[DeviceInfo] = []
    host: HostInfo = msgspec.field(default_factory=HostInfo)
    harnesses: list[str] = []
    version: str = ""
    gpu_error: str = ""
    default_harness: str = ""  # what a model naming no harness gets here, and why
    engines: dict[str, str] = {}  # harness name -> its engine and version ("llamacpp": "xllamacpp 2026.10.1")
    multi_host: bool = False  # joins gangs ([neuron] multi_host)
    advertise_address: str = ""  # the address its gang ranks bind and peers reach it on


class DeviceHealth(WireStruct, omit_defaults=False):
    """Live readings of one device."""

    index: int
    vram_used_mb: int = 0
    vram_free_mb: int = 0
    utilization_pct: int = 0
    temp_c: int = 0


class NeuronHealth(WireStruct, omit_defaults=False):
    """``GET /health``: live readings; cheap enough to poll every few seconds."""

    uptime_s: float
    devices: list[DeviceHealth] = []
    host: HostInfo = msgspec.field(default_factory=HostInfo)


class ModelStatus(enum.StrEnum):
    """A model's status as the gateway sees it."""

    DOWNLOADING = "downloading"  # fetching the model's files before its engine starts (a load in progress)
    LOADING = "loading"
    LOADED = "loaded"
    SLEEPING = "sleeping"
    UNLOADED = "unloaded"
    FAILED = "failed"


#: Statuses of a model that holds, or is about to hold, memory on its neuron.
RESIDENT = frozenset({ModelStatus.LOADED, ModelStatus.LOADING, ModelStatus.DOWNLOADING})


class DownloadInfo(WireStruct, omit_defaults=False):
    """A download in progress: bytes so far, in total, and the rate (bytes per second)."""

    source: str = ""
    file: str = ""
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_second: float = 0.0


class RankSpec(WireStruct, omit_defaults=False):
    """One member of a *gang*: a model served by ``size`` neurons at once through the engine's own multi-node
    runtime (vLLM's). The gateway names the gang, the rank and the peers; rank 0, the *head*, serves the API and
    its neuron picks ``master_port`` (and reports its engine ``versions``); the followers run headless and are
    given the head's ``master_addr``, ``master_port`` and ``versions``, which they must match exactly.
    """

    gang: str
    rank: int
    size: int
    peers: list[str] = []  # every member's advertise address, by rank (the head first)
    master_addr: str = ""
    master_port: int = 0
    versions: dict[str, str] = {}

    @property
    def head(self) -> bool:
        """This member serves the API."""
        return self.rank == 0


class ModelInfo(WireStruct, omit_defaults=False):
    """One model known to the neuron: loaded, loading, failed, or unloaded but loadable."""

    id: str
    harness: str = ""
    status: ModelStatus = ModelStatus.UNLOADED
    devices: list[int] = []
    vram_used_mb: int = 0
    last_error: str = ""
    in_flight: int = 0
    loaded_at: float = 0.0
    waiting: int = 0
    running: int = 0
    kv_cache_usage: float = 0.0
    download: DownloadInfo | None = None  # while downloading
    #: For a model not running here: whether it could start now. ``local`` (files here), ``download`` (its
    #: ``download_bytes`` must be fetched first), ``unavailable`` (``unavailable_kind`` says why), "" = not checked.
    availability: str = ""
    download_bytes: int = 0
    unavailable_kind: str = ""
    rank: RankSpec | None = None  # a gang member: which one, of which gang
    context_length: int = 0  # tokens one request may use, as the running engine says (0 = not known)


class ModelList(WireStruct, omit_defaults=False):
    """``GET /models``."""

    models: list[ModelInfo] = []


class ModelSpec(WireStruct):
    """What to load: the argument every harness receives.

    ``harness``, ``source`` and ``quant`` empty mean "the neuron's default for this id"; ``devices`` ``None``
    means "let preflight choose"; ``options`` are harness-specific and validated against the harness's
    ``Options``; ``vram_mb`` is what the catalogue says the model needs (0 = unknown) — in all: a gang member
    needs its share. ``hosts`` > 1: the model spans that many neurons, and a load must carry its ``rank``.
    ``task``: ``chat``, ``embed`` or ``rerank`` — what the engine is started for (a harness refuses one it
    cannot serve: 422 ``task_unsupported``).
    """

    model_id: ModelId
    harness: str = ""
    source: str = ""
    quant: str = ""
    tensor_parallel: int = 1
    devices: list[int] | None = None
    vram_mb: int = 0
    options: dict[str, Any] = {}
    normalise: bool = True
    json_tool_calls: bool = True
    system_messages: Literal["auto", "keep", "merge"] = "auto"
    hosts: int = 1
    rank: RankSpec | None = None
    task: Literal["chat", "embed", "rerank"] = "chat"  # what the engine is started for (its runner, its flags)


class PullRequest(WireStruct):
    """``POST /models/pull``: fetch a source's files now (nothing starts). ``harness`` picks the format when a
    repository holds several; ``wait = false`` answers 202 at once (progress in ``GET /pulls``)."""

    source: str
    quant: str = ""
    harness: str = ""
    wait: bool = True


class PullResponse(WireStruct, omit_defaults=False):
    """Answer to a pull: where the files are (once there), which, and how far the download is."""

    source: str
    status: Literal["downloading", "ready"]
    path: str = ""
    files: list[str] = []
    download: DownloadInfo | None = None


class LoadRequest(ModelSpec):
    """``POST /models/load``: a :class:`ModelSpec`, plus ``wait = false`` to get 202 instead of waiting."""

    wait: bool = True


class LoadResponse(WireStruct, omit_defaults=False):
    """Answer to load and unload requests."""

    model_id: str
    status: ModelStatus
    endpoint: str = ""
    rank: RankSpec | None = None  # a gang member's rank as this neuron completed it (the head: its master port)


class UnloadRequest(WireStruct):
    """``POST /models/unload``: the engine sleeps where its harness can (vLLM's sleep mode), else stops.
    ``stop``: stop it for real even where it could sleep (the gateway's ``full_stop_after_unloads``, a gang
    that failed). ``full`` is the same flag under its 0.1.0 name, still read."""

    model_id: ModelId
    stop: bool = False
    full: bool = False


class EndpointInfo(WireStruct):
    """``GET /models/{id}/endpoint``: where inference for the model is served (the neuron's own /v1)."""

    url: str


class PreflightErrorInfo(WireStruct):
    """Why a load was refused before anything started."""

    kind: str
    model_id: str
    message: str
    suggestion: str = ""


class PreflightErrorBody(WireStruct):
    """The 422 body of a refused load: ``{"error": {"kind", "model_id", "message", "suggestion"}}``."""

    error: PreflightErrorInfo
