"""The harness contract: what an engine plugin implements so a neuron can serve models with it.

A harness *describes and drives* one inference engine (vLLM, llama.cpp, …). The neuron creates one instance
per harness class at start-up and calls it for every model that names it. Methods are coroutines and run on
the neuron's event loop: they must never block it (use subprocesses, ``asyncio.to_thread`` or aiohttp).
"""

from __future__ import annotations

import abc
import enum
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import aiohttp
import msgspec

from helexa.engine.credentials import EngineCredentials
from helexa.engine.ports import PortAllocator
from helexa.errors import ConfigError, PreflightError
from helexa.wire.neuron import ModelSpec

__all__ = ["GpuState", "Harness", "HarnessContext", "HarnessState", "Inventory", "NoOptions", "PlacementPlan"]


class HarnessState(enum.StrEnum):
    """Lifecycle state of one model inside a harness. Defined once, here; plugins report these."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    SLEEPING = "sleeping"
    STOPPING = "stopping"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class GpuState:
    """A device as preflight sees it: identity, total and currently free memory."""

    index: int
    name: str
    vram_total_mb: int
    vram_free_mb: int


@dataclass(frozen=True, slots=True)
class Inventory:
    """What this host has right now, for preflight: its GPUs (none on a CPU-only host) and free RAM."""

    gpus: tuple[GpuState, ...] = ()
    ram_available_mb: int = 0


class PlacementPlan(msgspec.Struct, kw_only=True, frozen=True):
    """Where and how a model will run, decided by :meth:`Harness.preflight` before anything starts.

    ``devices`` are device indices on this host (empty = CPU); ``files`` the resolved weight files;
    ``vram_mb`` the memory planned in total; ``source`` the resolved source path; ``device_vram_mb`` the total
    memory of each planned device; ``context`` the tokens of context one request may use, where preflight chose
    it (the model's trained context, or what of it fits); 0 = as configured or the engine's own.
    """

    devices: tuple[int, ...] = ()
    tensor_parallel: int = 1
    files: tuple[str, ...] = ()
    vram_mb: int = 0
    source: str = ""
    device_vram_mb: tuple[int, ...] = ()
    context: int = 0


@dataclass(frozen=True, slots=True)
class HarnessContext:
    """What the neuron gives each harness instance at start-up.

    ``port_range``: engines listen on ports from this inclusive range, on ``engine_host`` (always loopback:
    only the neuron talks to engines); ``ports``, the neuron's one allocator over that range, which every
    harness draws from (``None``: a harness makes its own, for a harness used alone, as in tests).
    ``model_dirs``: the only directories local model files may come from.
    ``on_exit(model_id, reason)``: a harness calls it when an engine dies on its own, so the neuron can mark the
    model ``failed``. ``advertise_address``, ``rank_interface``: where a gang rank's traffic goes (``[neuron]``),
    for harnesses that run ranks. ``credentials``: the neuron's engine secrets by origin (see
    :mod:`helexa.engine.credentials`): every request the neuron's session sends to a registered engine carries
    its secret; a harness that starts an engine itself registers the engine's URL and secret there
    (:class:`helexa.ProcessHarness` does it for its engines).
    """

    port_range: tuple[int, int] = (20000, 20999)
    engine_host: str = "127.0.0.1"
    ports: PortAllocator | None = None
    model_dirs: tuple[Path, ...] = ()
    ready_timeout_s: float = 600.0
    stop_timeout_s: float = 15.0
    log_lines: int = 1000
    on_exit: Callable[[str, str], None] = field(default=lambda model_id, reason: None)
    advertise_address: str = ""
    rank_interface: str = ""
    credentials: EngineCredentials = field(default_factory=EngineCredentials)


class NoOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Options of a harness that takes none."""


class Harness(abc.ABC):
    """Base class of every engine harness.

    Class attributes a subclass sets:

    - ``name``: the harness name used in config (``harness = "llamacpp"``); unique across installed plugins.
    - ``Options``: a strict msgspec Struct for one model's engine options (``[[models]] options``).
    - ``load_options``: the options a load request over HTTP may set (context size, parallel slots, …). All
      others come only from the neuron's own configuration: never list one that chooses an executable, its
      arguments, its environment or a URL — a neuron starts programs, and HTTP must not pick them.
    - ``request_source``: ``False`` when the ``source`` itself must come from configuration (a URL).
    """

    name: ClassVar[str]
    Options: ClassVar[type[msgspec.Struct]] = NoOptions
    load_options: ClassVar[frozenset[str]] = frozenset()
    #: Whether a load request may name the model's ``source`` (a path under the model directories, which
    #: preflight checks). ``False`` where the source is a URL or anything else that must come from config.
    request_source: ClassVar[bool] = True
    #: Weight formats the engine reads (``gguf``, ``safetensors``); preflight refuses others.
    formats: ClassVar[frozenset[str]] = frozenset()
    #: Whether the engine can run one model across several hosts (``hosts > 1``): then a spec may carry a
    #: ``rank`` (:class:`helexa.RankSpec`), and the harness starts that rank — the head serving the API, the
    #: others headless — on the engine's own multi-node runtime. helexa places, starts and watches the ranks.
    multi_host: ClassVar[bool] = False
    #: The engine can run a model without a GPU (in RAM).
    cpu_ok: ClassVar[bool] = False
    #: What a model may be started for with this engine (``ModelSpec.task``): ``chat``, ``embed``, ``rerank``.
    tasks: ClassVar[frozenset[str]] = frozenset({"chat"})
    #: With no context configured (``kv_context`` 0), preflight picks one for the plan (``plan.context``): the
    #: model's trained context, or the largest of its halvings (down to ``MIN_AUTO_CONTEXT``) that fits.
    auto_context: ClassVar[bool] = False

    def __init__(self, context: HarnessContext | None = None) -> None:
        self.context = context if context is not None else HarnessContext()

    @classmethod
    def parse_options(cls, raw: dict[str, Any], *, model_id: str = "") -> msgspec.Struct:
        """Validate one model's raw option table against ``Options``.

        :raises ConfigError: naming the harness, the model and the offending key.
        """
        try:
            return msgspec.convert(raw, cls.Options)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"harness {cls.name!r}, model {model_id!r}: options: {exc}{_choices(cls, exc)}") from None

    @abc.abstractmethod
    async def preflight(self, spec: ModelSpec, inventory: Inventory) -> PlacementPlan:
        """Decide whether and where ``spec`` can run, before any process starts. No side effects.

        Called for every load request, concurrently for different models.
        :raises helexa.errors.HelexaError: a typed rejection the neuron answers with 422.
        """

    @abc.abstractmethod
    async def load(self, spec: ModelSpec, plan: PlacementPlan) -> str:
        """Start serving ``spec`` as planned; return the base URL of its OpenAI API once it answers.

        Valid in state ``stopped`` or ``failed``; the neuron never calls it twice concurrently for one model.
        """

    @abc.abstractmethod
    async def unload(self, model_id: str) -> None:
        """Stop serving ``model_id`` and free its memory. Idempotent: unloading a stopped model is a no-op."""

    @abc.abstractmethod
    async def state(self, model_id: str) -> HarnessState:
        """The current state of ``model_id`` (``stopped`` when unknown). Cheap; polled often."""

    def check_task(self, spec: ModelSpec) -> None:
        """:raises PreflightError: ``task_unsupported``: this engine cannot serve ``spec.task``."""
        if spec.task not in self.tasks:
            raise PreflightError(
                "task_unsupported",
                spec.model_id,
                f"harness {self.name!r} cannot start a model for {spec.task!r} "
                f"(it serves: {', '.join(sorted(self.tasks))})",
                "use a harness that serves it, or change the model's task",
            )

    async def sleep(self, model_id: str) -> bool:
        """Put a ready model to sleep, freeing accelerator memory but keeping the process. Return whether it
        slept; the default cannot sleep, and the neuron then unloads for real."""
        return False

    async def wake(self, model_id: str) -> bool:
        """Wake a sleeping model; return whether it is ready again. The default cannot."""
        return False

    async def count_tokens(
        self, session: aiohttp.ClientSession, base_url: str, messages: list[dict[str, Any]], tools: list[Any]
    ) -> int:
        """Tokens the chat ``messages`` (and ``tools``) take as a prompt, from the engine's own tokenizer.

        :param base_url: the engine's OpenAI base URL (as ``load`` returned it).
        :raises NotImplementedError: the engine cannot count tokens (the neuron answers 501).
        """
        raise NotImplementedError(f"harness {self.name!r} cannot count tokens")

    def kv_context(self, spec: ModelSpec) -> int:
        """Tokens of KV cache a load of ``spec`` reserves (its context size as configured), for the memory
        estimate; 0 means the model's trained context. Pure.

        :raises helexa.errors.PreflightError: ``invalid_options``.
        """
        return 0

    def kv_copies(self, spec: ModelSpec) -> int:
        """How many contexts' worth of KV cache the engine allocates (slots that do not share one cache each hold
        one), for the memory estimate. Pure."""
        return 1

    async def context_length(self, session: aiohttp.ClientSession, base_url: str) -> int:
        """The context one request may use on the running engine, as the engine itself says (llama.cpp's
        ``n_ctx``, vLLM's ``max_model_len``); 0 = unknown. Published on the model's card for clients."""
        return 0

    def logs(self, model_id: str, last: int | None = None) -> list[str]:
        """The engine's most recent output lines for ``model_id`` (empty when it has none)."""
        return []

    def last_error(self, model_id: str) -> str:
        """Why ``model_id`` is ``failed`` (empty otherwise)."""
        return ""

    def versions(self) -> dict[str, str]:
        """The exact versions every rank of one gang must share (e.g. the engine and its torch); the head's are
        sent to the followers, and a follower whose differ is refused. Blocking is allowed; must not raise."""
        return {}

    def engine_version(self) -> str:
        """The engine this harness runs and its version, e.g. ``vllm 0.11.0`` (empty when unknown). Blocking is
        allowed (the neuron calls it once, in a thread, at start); it must not raise."""
        return ""

    async def close(self) -> None:  # noqa: B027  (optional: harnesses that start nothing keep the no-op)
        """Stop everything this harness started. Called once, when the neuron shuts down."""


def _choices(harness: type[Harness], exc: msgspec.ValidationError) -> str:
    """ "; one of: …" when ``exc`` is about an option with a fixed list of values, else ""."""
    match = re.search(r"at `\$\.(\w+)`", str(exc))
    if match is None:
        return ""
    hints = typing.get_type_hints(harness.Options)
    values = typing.get_args(hints.get(match.group(1)))
    if (
        not values
        or not all(isinstance(v, str) for v in values)
        or typing.get_origin(hints[match.group(1)]) is not Literal
    ):
        return ""
    return "; one of: " + ", ".join(values)
