"""What every config section is built from, and the sections every role reads (``[server]``, ``[plugins]``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

__all__ = ["ConfigStruct", "PluginsSection", "ServerSection", "doc"]


class ConfigStruct(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of config sections: keyword-only, and strict — an unknown key is an error, so typos fail loudly."""


def doc(text: str, **constraints: Any) -> msgspec.Meta:
    """A field's description (what ``helexa config init`` prints above it) and its constraints."""
    return msgspec.Meta(description=text, **constraints)


class ServerSection(ConfigStruct):
    """HTTP settings shared by every role."""

    max_body_mb: Annotated[int, doc("Largest request body accepted, in MiB; larger bodies get 413.", ge=1)] = 16
    max_answer_mb: Annotated[
        int,
        doc(
            "Largest answer read whole from upstream — a neuron's, by the gateway (a non-streamed answer, an error, "
            "a control call's); an engine's, by the neuron — in MiB. A larger one is a 502 upstream_error naming "
            "the server, its connection closed; streams are relayed as they come, whatever their length. Raise it "
            "for very large embedding batches.",
            ge=1,
        ),
    ] = 64
    shutdown_grace_seconds: Annotated[
        float, doc("On SIGTERM/SIGINT, how long in-flight requests may finish before connections close.", ge=0)
    ] = 30.0
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"], doc("Logging level: debug, info, warning or error.")
    ] = "info"
    log_format: Annotated[
        Literal["text", "json"],
        doc("text: one readable line per event; json: one JSON object per line (journald, Loki)."),
    ] = "text"


class PluginsSection(ConfigStruct):
    """Harness plugin selection."""

    disabled: Annotated[list[str], doc("Entry-point names of plugins not to load, e.g. ['vllm'].")] = []
