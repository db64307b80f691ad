"""Loading the configuration: the whole ``Config`` from one TOML file (and a catalogue file it names), with
``HELEXA_<SECTION>__<KEY>`` environment overrides, renamed keys and the cross-field checks msgspec cannot
express. The only module that reads ``os.environ``; see :mod:`helexa.config` for the rules.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec
import tomli_w

from helexa.config.base import ConfigStruct, PluginsSection, ServerSection
from helexa.config.catalogue import Catalogue, ModelEntry
from helexa.config.gateway import (
    AuthSection,
    BatchesSection,
    ClusterSection,
    EvictionSection,
    GatewaySection,
    NeuronRef,
    SchedulerSection,
)
from helexa.config.neuron import NeuronSection
from helexa.errors import ConfigError
from helexa.wire import explain_validation_error, is_ip_address

__all__ = ["RENAMED", "Config", "apply_env_overrides", "load_config", "parse_listen", "rename_keys"]

logger = logging.getLogger(__name__)
ENV_PREFIX = "HELEXA_"
_T = TypeVar("_T")


class Config(ConfigStruct):
    """The whole configuration of one helexa process."""

    server: ServerSection = msgspec.field(default_factory=ServerSection)
    gateway: GatewaySection = msgspec.field(default_factory=GatewaySection)
    auth: AuthSection = msgspec.field(default_factory=AuthSection)
    eviction: EvictionSection = msgspec.field(default_factory=EvictionSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)
    cluster: ClusterSection = msgspec.field(default_factory=ClusterSection)
    batches: BatchesSection = msgspec.field(default_factory=BatchesSection)
    neurons: list[NeuronRef] = []
    models: list[ModelEntry] = []
    neuron: NeuronSection = msgspec.field(default_factory=NeuronSection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)


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


def _check_multi_host(cfg: Config, label: str) -> None:
    """Gang settings: addresses are IP literals (they become argv and environment of the ranks)."""
    neuron = cfg.neuron
    if neuron.advertise_address and not is_ip_address(neuron.advertise_address):
        raise ConfigError(
            f"{label}: $.neuron.advertise_address: expected an IP address, got {neuron.advertise_address!r}"
        )
    if neuron.multi_host and not neuron.advertise_address:
        raise ConfigError(
            f"{label}: $.neuron.advertise_address: multi_host needs this host's IP address on the gang network"
        )
    if neuron.multi_host and not neuron.gang_peers:
        # the rank ports are unauthenticated (vLLM's can run code): without the list, whoever holds the neuron
        # token could point a rank at any host
        raise ConfigError(
            f"{label}: $.neuron.gang_peers: multi_host needs the IP addresses of the hosts that may share a model "
            "with this one (every gang member's advertise_address)"
        )
    for i, peer in enumerate(neuron.gang_peers):
        if not is_ip_address(peer):
            raise ConfigError(f"{label}: $.neuron.gang_peers[{i}]: expected an IP address, got {peer!r}")
    if neuron.rank_interface and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,15}", neuron.rank_interface):
        raise ConfigError(f"{label}: $.neuron.rank_interface: expected an interface name such as eth0")


def _check_cluster(cfg: Config, label: str) -> None:
    """The store is a URL the redis client takes; several workers share state only through one."""
    store = cfg.cluster.store
    url = urlsplit(store)
    if store and (url.scheme not in ("redis", "rediss", "unix") or not (url.netloc or url.path)):
        raise ConfigError(  # never the address itself: it may hold the store's password
            f"{label}: $.cluster.store: expected redis://host:6379/0, rediss://… or unix:///path, got a "
            f"{url.scheme or 'scheme-less'} address"
        )
    if cfg.gateway.workers > 1 and not store:
        raise ConfigError(
            f"{label}: $.gateway.workers: {cfg.gateway.workers} workers share limits, loads and sessions through "
            "[cluster] store: set it (a Valkey or Redis server), or keep workers = 1"
        )
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", cfg.cluster.prefix):
        raise ConfigError(f"{label}: $.cluster.prefix: letters, digits and . _ - : only (1 to 64)")
    if cfg.cluster.name and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", cfg.cluster.name):
        raise ConfigError(f"{label}: $.cluster.name: letters, digits and . _ - : only (1 to 64)")


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
    for key in ("port_range", "rank_port_range"):
        first_last = getattr(cfg.neuron, key)
        if len(first_last) != 2 or not 1 <= first_last[0] <= first_last[1] <= 65535:
            raise ConfigError(f"{label}: $.neuron.{key}: expected [first, last] with 1 <= first <= last <= 65535")
    _check_multi_host(cfg, label)
    _check_cluster(cfg, label)
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
