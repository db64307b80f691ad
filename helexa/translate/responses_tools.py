"""Responses API tools → chat functions and back. Pure.

``function`` tools pass through; the function tools inside a ``namespace`` tool are flattened to
``<namespace>__<name>`` (and a call to one is mapped back to its ``name`` and ``namespace``); hosted tools the
fleet cannot run (``web_search``, ``file_search``, ``code_interpreter``, ``mcp``, …) are left out and listed in
:attr:`ToolSet.dropped`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from helexa.errors import InvalidRequest

__all__ = ["FunctionTool", "ToolSet"]


class _Base(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Tolerant of fields helexa does not model."""


class FunctionTool(_Base):
    """A tool: ``function`` (name, parameters), ``namespace`` (name, function ``tools``) or a hosted one."""

    type: str
    name: str = ""
    description: str = ""
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    tools: list[dict[str, Any]] = []


_NAMESPACE_SEPARATOR = "__"


class ToolSet:
    """The chat functions a request's tools become, and the way back from a flattened name.

    ``functions``: OpenAI chat tools; ``origin``: flattened name → (namespace, name) for namespace members;
    ``dropped``: the hosted tools left out (their ``type``).
    """

    def __init__(self, tools: list[FunctionTool]) -> None:
        self.functions: list[dict[str, Any]] = []
        self.origin: dict[str, tuple[str, str]] = {}
        self.dropped: list[str] = []
        for i, tool in enumerate(tools):
            if tool.type == "function":
                self._add(tool.name, tool.description, tool.parameters, f"tools[{i}]")
            elif tool.type == "namespace":
                self._namespace(tool, f"tools[{i}]")
            else:
                self.dropped.append(tool.type)

    def _add(self, name: str, description: str, parameters: Any, where: str, namespace: str = "") -> None:
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"{where}.name: a function tool needs a name", param=f"{where}.name")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"{where}.parameters: expected an object", param=f"{where}.parameters")
        flat = f"{namespace}{_NAMESPACE_SEPARATOR}{name}" if namespace else name
        if namespace:
            self.origin[flat] = (namespace, name)
        function = {"name": flat, "description": description if isinstance(description, str) else ""}
        function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        self.functions.append({"type": "function", "function": function})

    def _namespace(self, tool: FunctionTool, where: str) -> None:
        if not tool.name:
            raise InvalidRequest(f"{where}.name: a namespace tool needs a name", param=f"{where}.name")
        for j, member in enumerate(tool.tools):
            inner = f"{where}.tools[{j}]"
            if member.get("type", "function") != "function":
                self.dropped.append(str(member.get("type")))
                continue
            self._add(member.get("name", ""), member.get("description", ""), member.get("parameters"), inner, tool.name)

    def flat_name(self, name: str, namespace: str | None) -> str:
        """The chat name of a call the client sends back (``namespace`` set for namespace members)."""
        return f"{namespace}{_NAMESPACE_SEPARATOR}{name}" if namespace else name

    def call_fields(self, flat: str) -> dict[str, str]:
        """``name`` (and ``namespace``) of an output ``function_call`` item for the engine's call ``flat``."""
        if flat in self.origin:
            namespace, name = self.origin[flat]
            return {"name": name, "namespace": namespace}
        return {"name": flat}
