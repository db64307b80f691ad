"""Render commented example configurations from the config structs themselves.

Every option's comment is its ``msgspec.Meta(description=…)``, and every value is its default written by
tomli-w, so ``helexa config init`` and the files in ``config/`` cannot drift from the code (a test compares
them). Array-of-table sections (``[[neurons]]``, ``[[models]]``) are shown as a commented example entry.
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect as mi
import tomli_w

from helexa.config import Config

__all__ = ["ROLE_SECTIONS", "render_example"]

ROLE_SECTIONS: dict[str, tuple[str, ...]] = {
    "gateway": ("server", "gateway", "auth", "eviction", "scheduler", "cluster", "batches", "neurons", "models"),
    "neuron": ("server", "neuron", "plugins"),
    "both": (
        "server",
        "gateway",
        "auth",
        "eviction",
        "scheduler",
        "cluster",
        "batches",
        "neurons",
        "models",
        "neuron",
        "plugins",
    ),
}

# Values shown for fields that have no default, in the commented [[…]] examples.
_EXAMPLES: dict[tuple[str, str], Any] = {
    ("neurons", "name"): "gpu1",
    ("neurons", "endpoint"): "http://gpu1.internal:13131",
    ("models", "id"): "Qwen/Qwen3-8B",
    ("auth.keys", "name"): "ci-bot",
    ("auth.keys", "key"): "sk-change-me",
    ("auth.keys", "requests_per_minute"): 60,
    ("models", "idle_unload_seconds"): 1800,
}
_ROLE_INTRO = {
    "gateway": "The gateway: one OpenAI + Anthropic API in front of the neurons.",
    "neuron": "A neuron: one per GPU host; runs the engines.",
    "both": "Gateway and neuron in one process (the default a new user starts with).",
}


def _field_doc(field: mi.Field) -> str:
    kind = field.type
    if isinstance(kind, mi.Metadata) and kind.extra_json_schema:
        return str(kind.extra_json_schema.get("description", ""))
    return ""


def _struct_type(kind: mi.Type) -> type[msgspec.Struct] | None:
    if isinstance(kind, mi.Metadata):
        kind = kind.type
    if isinstance(kind, mi.ListType):
        kind = kind.item_type
    return kind.cls if isinstance(kind, mi.StructType) else None


def _default(field: mi.Field) -> Any:
    if field.default is not msgspec.NODEFAULT:
        return field.default
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return msgspec.NODEFAULT


def _value_line(key: str, value: Any) -> str:
    if isinstance(value, dict):  # tomli-w writes dicts as sub-tables; an empty inline table reads better here
        return f"{key} = {{}}" if not value else tomli_w.dumps({key: value}).strip()
    if isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value):  # one line, commentable
        items = (tomli_w.dumps({"v": v}).strip().split(" = ", 1)[1] for v in value)
        return f"{key} = [{', '.join(items)}]"
    return tomli_w.dumps({key: value}).strip()


def _summary(cls: type) -> str:
    """The first paragraph of a class docstring, on one line."""
    return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())


def _section(name: str, cls: type[msgspec.Struct], *, array: bool) -> list[str]:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    comment = "# " if array else ""
    lines = [f"# {_summary(cls)}"]
    if array:
        lines.append("# Repeat the table for each entry; shown commented out.")
    lines.append(f"{comment}[[{name}]]" if array else f"[{name}]")
    tables = []
    for field in info.fields:
        nested = _struct_type(field.type)
        if nested is not None and not array:  # an array of tables inside this section: shown after it
            tables.append((f"{name}.{field.name}", nested))
            continue
        doc = _field_doc(field)
        if doc:
            lines.append(f"{comment}# {doc}")
        value = _EXAMPLES.get((name, field.name), _default(field)) if array else _default(field)
        if value is msgspec.NODEFAULT:
            value = _EXAMPLES[(name, field.name)]
        lines.append(comment + _value_line(field.name, msgspec.to_builtins(value)))
    for table_name, nested in tables:
        lines.append("")
        lines.extend(_section(table_name, nested, array=True))
    return lines


def render_example(role: str) -> str:
    """The commented example configuration for ``role`` (``gateway``, ``neuron`` or ``both``)."""
    info = mi.type_info(Config)
    assert isinstance(info, mi.StructType)
    fields = {f.name: f for f in info.fields}
    out = [
        f"# helexa configuration, role {role}: {_ROLE_INTRO[role]}",
        f"# Every option with its default. Written by `helexa config init --role {role}`.",
        "# Environment variables override any key: HELEXA_<SECTION>__<KEY>, e.g. HELEXA_SERVER__LOG_LEVEL=debug.",
    ]
    for name in ROLE_SECTIONS[role]:
        field = fields[name]
        cls = _struct_type(field.type)
        assert cls is not None
        out.append("")
        out.extend(_section(name, cls, array=isinstance(field.type, mi.ListType)))
    return "\n".join(out) + "\n"
