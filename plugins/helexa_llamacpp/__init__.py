"""helexa harness for llama.cpp: one ``llama-server`` process per model, serving GGUF weights.

The server binary is, in order: the ``binary`` option; ``llama-server`` on PATH; else the prebuilt CPU
server from the ``xllamacpp`` wheel (``pip install 'helexa[llamacpp]'``), started through
``python -m helexa_llamacpp.server``, which takes the same flags. Nothing is compiled.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from typing import Any

import aiohttp
import msgspec

from helexa import ConfigError, HarnessContext, ModelSpec, PlacementPlan, ProcessHarness, hookimpl, model_file

__all__ = ["LlamaCpp", "LlamaCppOptions"]


class LlamaCppOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Per-model llama.cpp options (``[[models]] options = {…}``)."""

    binary: str = ""
    """Path of a llama-server binary; empty = llama-server on PATH, else the bundled CPU server."""
    ctx_size: int = 0
    """Context size in tokens (-c); 0 = the model's trained context (from its GGUF header), smaller when that
    would not fit the host's memory."""
    parallel: int = 2
    """Concurrent request slots (-np)."""
    kv_unified: bool = True
    """One KV cache shared by every slot (--kv-unified): a single request may use the whole context while the
    slots share it; false = each slot gets ctx_size / parallel."""
    gpu_layers: int = 999
    """Layers offloaded to the GPU(s) (-ngl); ignored when the plan is CPU-only."""
    threads: int = 0
    """CPU threads for generation (-t); 0 = llama.cpp's default."""
    jinja: bool = True
    """Use the model's Jinja chat template (--jinja)."""
    temperature: float | None = None
    """The server's default sampling temperature (--temp); a request's own temperature wins. None = llama.cpp's."""
    top_p: float | None = None
    """The server's default top-p (--top-p); None = llama.cpp's."""
    repeat_penalty: float | None = None
    """The server's default repeat penalty (--repeat-penalty); None = llama.cpp's."""
    chat_template: str = ""
    """A Jinja chat template to use instead of the GGUF's own (--chat-template; with jinja = false, one of
    llama.cpp's built-in template names)."""
    chat_template_file: str = ""
    """A file holding a Jinja chat template (--chat-template-file)."""
    extra_args: list[str] = []
    """Further llama-server flags, passed as they are; with the bundled server, only the ones it takes (others
    are refused at preflight: 422 invalid_options naming the flag)."""


class LlamaCpp(ProcessHarness):
    """llama.cpp's OpenAI-compatible server; GGUF only; runs on CPU or split over GPUs."""

    name = "llamacpp"
    Options = LlamaCppOptions
    load_options = frozenset(
        {
            "ctx_size",
            "parallel",
            "gpu_layers",
            "threads",
            "jinja",
            "kv_unified",
            "temperature",
            "top_p",
            "repeat_penalty",
        }
    )
    formats = frozenset({"gguf"})
    cpu_ok = True
    tasks = frozenset({"chat", "embed", "rerank"})  # --embedding, --reranking
    auto_context = True  # ctx_size 0: the trained context, or what of it fits
    health_path = "/health"
    secret_env = "LLAMA_ARG_API_KEY"  # llama-server's --api-key: every route but /health needs it
    metrics_path = "/metrics"
    metric_names = {
        "waiting": "llamacpp:requests_deferred",
        "running": "llamacpp:requests_processing",
        "kv_cache": "llamacpp:kv_cache_usage_ratio",
    }

    def __init__(self, context: HarnessContext | None = None) -> None:
        super().__init__(context)
        on_path = shutil.which("llama-server")
        self._default_binary = [on_path] if on_path else [sys.executable, "-m", "helexa_llamacpp.server"]

    def command(self, spec: ModelSpec, plan: PlacementPlan, port: int, options: LlamaCppOptions) -> list[str]:
        """``llama-server -m FILE --host 127.0.0.1 --port P --alias ID -c … -np … -ngl … [--tensor-split …]``."""
        argv = [options.binary] if options.binary else list(self._default_binary)
        argv += ["-m", str(model_file(plan)), "--host", self.context.engine_host, "--port", str(port)]
        # the configured size as it is; else the context preflight chose for one request (all slots' worth
        # without a unified cache); else 0: llama.cpp's own (the model's trained context)
        context = options.ctx_size or plan.context * _copies(options)
        argv += ["--alias", spec.model_id, "-c", str(context), "-np", str(options.parallel)]
        argv += ["-ngl", str(options.gpu_layers if plan.devices else 0), "--metrics"]
        if options.kv_unified:
            argv.append("--kv-unified")
        if len(plan.devices) > 1:
            argv += ["--tensor-split", ",".join("1" for _ in plan.devices)]
        if options.threads:
            argv += ["-t", str(options.threads)]
        if options.jinja:
            argv.append("--jinja")
        for flag, value in (
            ("--temp", options.temperature),
            ("--top-p", options.top_p),
            ("--repeat-penalty", options.repeat_penalty),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if options.chat_template:
            argv += ["--chat-template", options.chat_template]
        if options.chat_template_file:
            argv += ["--chat-template-file", options.chat_template_file]
        argv += _TASK_FLAGS[spec.task]
        return argv + list(options.extra_args)

    def kv_context(self, spec: ModelSpec) -> int:
        """``ctx_size`` (0: the model's trained context, or what of it fits: preflight decides)."""
        return self.options_for(spec).ctx_size

    def kv_copies(self, spec: ModelSpec) -> int:
        """An automatic context is per request: without a unified KV cache every slot holds one."""
        return _copies(self.options_for(spec))

    async def context_length(self, session: aiohttp.ClientSession, base_url: str) -> int:
        """The context one request may use: ``/props``' ``default_generation_settings.n_ctx``."""
        props = await _get_json(session, base_url.removesuffix("/v1") + "/props")
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        value = settings.get("n_ctx") if isinstance(settings, dict) else None
        return value if isinstance(value, int) and value > 0 else 0

    def engine_version(self) -> str:
        """``llama-server`` on PATH as it reports itself (``--version``), else the bundled ``xllamacpp`` wheel."""
        if self._default_binary[0] != sys.executable:
            try:
                done = subprocess.run(
                    [*self._default_binary, "--version"], capture_output=True, text=True, timeout=10, check=False
                )
            except (OSError, subprocess.TimeoutExpired):
                return "llama-server"
            line = next((x for x in (done.stdout + done.stderr).splitlines() if x.startswith("version")), "")
            return f"llama-server {line.removeprefix('version:').strip()}".strip()
        try:
            return f"xllamacpp {importlib.metadata.version('xllamacpp')}"
        except importlib.metadata.PackageNotFoundError:
            return ""

    @classmethod
    def parse_options(cls, raw: dict[str, Any], *, model_id: str = "") -> msgspec.Struct:
        """The options, with ``extra_args`` checked against the bundled server's flags when it is the one that
        will run (no ``binary``, no ``llama-server`` on PATH). :raises ConfigError: naming the flag."""
        options = super().parse_options(raw, model_id=model_id)
        assert isinstance(options, LlamaCppOptions)
        if options.extra_args and not options.binary and shutil.which("llama-server") is None:
            # imported here: the engine process runs that module with -m, and must not find it imported already
            from helexa_llamacpp.server import accepted_flags, unknown_flags  # noqa: PLC0415

            refused = unknown_flags(list(options.extra_args))
            if refused:
                raise ConfigError(
                    f"harness 'llamacpp', model {model_id!r}: extra_args: the bundled llama.cpp server does not take "
                    f"{refused[0]!r}; it takes {', '.join(accepted_flags())} (or set binary to a llama-server)"
                )
        return options

    async def count_tokens(
        self, session: aiohttp.ClientSession, base_url: str, messages: list[dict[str, Any]], tools: list[Any]
    ) -> int:
        """The model's chat template applied (``/apply-template``), then tokenized (``/tokenize``)."""
        root = base_url.removesuffix("/v1")
        template: dict[str, Any] = {"messages": messages}
        if tools:
            template["tools"] = tools
        prompt = (await _post_json(session, f"{root}/apply-template", template))["prompt"]
        return len((await _post_json(session, f"{root}/tokenize", {"content": prompt, "add_special": True}))["tokens"])

    def environment(self, spec: ModelSpec, plan: PlacementPlan, options: LlamaCppOptions) -> dict[str, str]:
        """Only the planned GPUs are visible (none for a CPU plan)."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in plan.devices)}


# llama-server's flags per task: embeddings pool the model's output; --reranking is --embedding --pooling rank
_TASK_FLAGS = {"chat": [], "embed": ["--embedding"], "rerank": ["--reranking"]}


def _copies(options: LlamaCppOptions) -> int:
    return 1 if options.kv_unified or options.ctx_size else max(1, options.parallel)


async def _get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _post_json(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> Any:
    """POST an idempotent request (templates, tokens: nothing is generated); a pooled connection llama.cpp
    already closed — found closed when the request was written, or closed before the answer — is retried (twice
    at most)."""
    for attempt in range(3):
        try:
            async with session.post(url, json=payload) as resp:
                resp.raise_for_status()
                return await resp.json()
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@hookimpl
def register_harnesses(register) -> None:  # noqa: ANN001  (signature declared in helexa.engine.hookspecs)
    """Register the llama.cpp harness."""
    register(LlamaCpp)
