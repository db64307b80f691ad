"""Sessions of ``helexa acp``: what a conversation is, and the small on-disk store that outlives a restart.

A session holds its working directory, model, mode (``code`` or the read-only ``plan``), the conversation in
OpenAI chat form and the permission answers the user gave "always". The store — one JSON file per session in a
directory of its own (``--sessions-dir``) — is written after every turn, atomically; ids are 32 hex digits, so
an id from the editor can never name another file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MODES", "Session", "SessionStore", "valid_id"]

log = logging.getLogger("helexa.acp")

MODES: dict[str, tuple[str, str]] = {
    "code": ("Code", "Reads files freely; writes, edits and runs commands after your permission."),
    "plan": ("Plan", "Read-only: reads and lists files, then proposes a plan without changing anything."),
}
_ID = re.compile(r"[0-9a-f]{32}")


def valid_id(session_id: str) -> bool:
    """Whether ``session_id`` has the form this agent gives session ids."""
    return bool(_ID.fullmatch(session_id))


@dataclass
class Session:
    """One conversation. ``task`` is the running turn, ``turn`` its mark (:mod:`helexa.acp.commands`),
    ``cancelled`` set by ``session/cancel``."""

    id: str
    cwd: Path
    model: str
    mode: str = "code"
    messages: list[dict[str, Any]] = field(default_factory=list)
    title: str = ""
    updated_at: str = ""
    always: dict[str, bool] = field(default_factory=dict)
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    cancelled: bool = False
    turn: str = ""

    def record(self) -> dict[str, Any]:
        """What the store keeps."""
        keep = ("id", "model", "mode", "messages", "title", "updated_at", "always")
        return {"cwd": str(self.cwd), **{k: getattr(self, k) for k in keep}}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Session:
        """A session from :meth:`record`'s form; ``ValueError`` when it is not that."""
        try:
            session = cls(
                id=str(data["id"]),
                cwd=Path(str(data["cwd"])),
                model=str(data["model"]),
                mode=str(data.get("mode", "code")),
                messages=list(data.get("messages") or []),
                title=str(data.get("title", "")),
                updated_at=str(data.get("updated_at", "")),
                always={str(k): bool(v) for k, v in (data.get("always") or {}).items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a session record: {exc}") from None
        if not valid_id(session.id) or session.mode not in MODES:
            raise ValueError("not a session record: bad id or mode")
        return session

    def touch(self) -> None:
        """Mark the session updated now and give it a title (its first prompt) if it has none."""
        self.updated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if not self.title:
            first = next((m.get("content") for m in self.messages if m.get("role") == "user"), "")
            self.title = " ".join(str(first).split())[:80]


class SessionStore:
    """Sessions as ``<id>.json`` files in ``directory`` (created 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def save(self, session: Session) -> None:
        """Write ``session`` (a temporary file renamed over the old one: never half a file)."""
        path = self.directory / f"{session.id}.json"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(session.record(), fh)
        os.replace(tmp, path)

    def load(self, session_id: str) -> Session | None:
        """The stored session, or ``None`` when there is none (or its file is damaged — logged)."""
        if not valid_id(session_id):
            return None
        path = self.directory / f"{session_id}.json"
        try:
            return Session.from_record(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("session file %s cannot be read: %s", path, exc)
            return None

    def all(self) -> list[Session]:
        """Every readable stored session, most recently updated first."""
        found = [self.load(p.stem) for p in self.directory.glob("*.json")]
        return sorted((s for s in found if s), key=lambda s: s.updated_at, reverse=True)
