"""Which conversation a request belongs to, for prefix affinity (see ``placement.pick_replica``).

Agents resend the whole conversation every turn; the replica that served the last turn has its prefix in
the engine's cache. A conversation is what the client names (``prompt_cache_key``, Anthropic
``metadata.user_id``'s session, OpenAI ``user``) or, when it names none, the first bytes of the request —
the system prompt and first messages, which every later turn repeats. Cheap: one hash of 2 KiB.
"""

from __future__ import annotations

import hashlib

import msgspec

__all__ = ["PREFIX_BYTES", "Conversation", "anthropic_session", "conversation_key"]

PREFIX_BYTES = 2048
_decoder = msgspec.json.Decoder()


def conversation_key(body: bytes, named: str = "") -> str:
    """The conversation of a request: ``named`` by the client, else a digest of the body's first bytes."""
    if named:
        return "n:" + named
    return "p:" + hashlib.blake2b(body[:PREFIX_BYTES], digest_size=12).hexdigest()


class Conversation:
    """A request's conversation, named lazily: the key is computed only where a model has several replicas
    (a single replica needs no choice), so the common case costs nothing."""

    __slots__ = ("_body", "_key", "_named")

    def __init__(self, body: bytes, named: str = "") -> None:
        self._body, self._named, self._key = body, named, ""

    @property
    def key(self) -> str:
        """The conversation key (computed on first use)."""
        if not self._key:
            self._key = conversation_key(self._body, self._named)
        return self._key

    @property
    def keyed(self) -> bool:
        """Whether routing needed the key (then the replica that serves it is worth remembering)."""
        return bool(self._key)


def anthropic_session(user_id: str) -> str:
    """The session in Anthropic ``metadata.user_id`` (Claude Code sends JSON with ``session_id``), else all of it."""
    if user_id.startswith("{"):
        try:
            value = _decoder.decode(user_id)
        except msgspec.DecodeError:
            return user_id
        if isinstance(value, dict) and isinstance(value.get("session_id"), str) and value["session_id"]:
            return value["session_id"]
    return user_id
