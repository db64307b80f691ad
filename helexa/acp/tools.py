"""The tools ``helexa acp`` offers a model, and the rules that keep them inside the session's directory.

Five tools, as OpenAI function definitions: ``read_file``, ``list_files`` (read-only, offered in every mode),
``write_file``, ``edit_file`` (search and replace, the search text must occur exactly once) and
``run_command`` (a shell command in the session's directory). Paths are relative to the session's working
directory or absolute inside it; a path that leaves it — through ``..``, an absolute path or a symbolic
link — is refused. Everything a tool returns to the model is capped at ``limit`` characters.

Pure functions here (:func:`confine`, :func:`apply_edit`, :func:`cap`, :func:`parse_arguments`) and one
action on the local machine (:func:`list_dir`); commands run in :mod:`helexa.acp.commands`; reading and writing
files go through the editor when it offers that (see :mod:`helexa.acp.agent`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "TOOLS",
    "Tool",
    "ToolError",
    "apply_edit",
    "cap",
    "confine",
    "list_dir",
    "offered",
    "parse_arguments",
    "select_lines",
    "text_argument",
]


class ToolError(Exception):
    """A tool call that cannot be carried out; the message goes back to the model (and the editor) as is."""


@dataclass(frozen=True)
class Tool:
    """One tool: its ACP kind (how editors show it), whether it changes anything, and its parameters."""

    name: str
    kind: Literal["read", "edit", "execute", "search"]
    changes: bool
    description: str
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


def _object(required: list[str], **props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


_PATH = {"type": "string", "description": "relative to the working directory"}
_TEXT = {"type": "string"}
TOOLS: dict[str, Tool] = {
    t.name: t
    for t in (
        Tool(
            "read_file",
            "read",
            False,
            "Read a text file. Optional line (1-based) and limit (number of lines) read a part of it.",
            _object(["path"], path=_PATH, line={"type": "integer"}, limit={"type": "integer"}),
        ),
        Tool(
            "list_files",
            "search",
            False,
            "List the entries of a directory (directories end with /).",
            _object([], path=_PATH),
        ),
        Tool(
            "write_file",
            "edit",
            True,
            "Create or overwrite a text file with the given content.",
            _object(["path", "content"], path=_PATH, content={"type": "string"}),
        ),
        Tool(
            "edit_file",
            "edit",
            True,
            "Replace old_text, which must occur exactly once in the file, with new_text.",
            _object(
                ["path", "old_text", "new_text"], path=_PATH, old_text={"type": "string"}, new_text={"type": "string"}
            ),
        ),
        Tool(
            "run_command",
            "execute",
            True,
            "Run a shell command in the working directory and return its exit code and output.",
            _object(["command"], command={"type": "string"}),
        ),
    )
}


def offered(read_only: bool) -> list[dict[str, Any]]:
    """The ``tools`` of a request: every tool, or in plan mode only those that change nothing."""
    return [t.spec() for t in TOOLS.values() if not (read_only and t.changes)]


def parse_arguments(raw: str) -> dict[str, Any]:
    """A call's ``arguments`` (a JSON object, or empty for none), else :class:`ToolError`."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ToolError(f"the arguments are not valid JSON ({exc}); send a JSON object") from None
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value


def text_argument(args: dict[str, Any], name: str, default: str | None = None) -> str:
    """A string argument, else :class:`ToolError` naming it."""
    value = args.get(name, default)
    if not isinstance(value, str):
        raise ToolError(f"argument {name!r} is required and must be a string")
    return value


def confine(cwd: Path, path: str) -> Path:
    """``path`` (relative to ``cwd``, or absolute) resolved, symbolic links followed; :class:`ToolError` when the
    result is not ``cwd`` or inside it. ``cwd`` must be absolute and already resolved."""
    if not path or "\x00" in path:
        raise ToolError("a path must be a non-empty string without NUL characters")
    resolved = Path(os.path.realpath(cwd / os.path.expanduser(path)))
    if resolved != cwd and cwd not in resolved.parents:
        raise ToolError(f"{path} is outside the session's working directory {cwd}; use a path inside it")
    return resolved


def apply_edit(text: str, old: str, new: str) -> str:
    """``text`` with the one occurrence of ``old`` replaced by ``new``; :class:`ToolError` when ``old`` is
    empty, missing or not unique (the model is told to include more context)."""
    if not old:
        raise ToolError("old_text must not be empty")
    count = text.count(old)
    if count == 0:
        raise ToolError("old_text was not found in the file; read the file and copy the text exactly")
    if count > 1:
        raise ToolError(f"old_text occurs {count} times; include more surrounding lines so it is unique")
    return text.replace(old, new, 1)


def cap(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a note saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[… {len(text) - limit} more characters not shown]"


def select_lines(text: str, line: Any, limit: Any) -> str:
    """Lines ``line`` (1-based) to ``line + limit - 1`` of ``text``; the whole text without them."""
    if line is None and limit is None:
        return text
    if not isinstance(line, int | None) or not isinstance(limit, int | None):
        raise ToolError("line and limit must be integers")
    start = max((line or 1) - 1, 0)
    lines = text.splitlines(keepends=True)
    end = len(lines) if limit is None else start + max(limit, 0)
    return "".join(lines[start:end])


def list_dir(path: Path, limit: int = 500) -> str:
    """A directory's entries, sorted, directories with a trailing ``/``; at most ``limit`` of them."""
    if not path.is_dir():
        raise ToolError(f"{path} is not a directory")
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f"\n[… {len(names) - limit} more entries]" if len(names) > limit else ""
    return "\n".join(names[:limit]) + more if names else "(empty directory)"
