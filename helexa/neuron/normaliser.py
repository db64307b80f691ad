"""The stream normaliser: reasoning and tool-call markers in model text become structured OpenAI fields.

Text between the reasoning markers (``<think>``…``</think>``) becomes ``reasoning_content``; a JSON object
between the tool-call markers (``<tool_call>``…``</tool_call>``, ``{"name": …, "arguments": {…}}``) becomes a
``tool_calls`` entry. It is model-agnostic and works on chat completions, streaming or not:

- markers split across chunks are held back until they resolve, never shown half;
- a tool call whose body is not valid JSON falls back to its original text, markers included;
- a choice that already carries ``reasoning_content`` or ``tool_calls`` (the engine parsed them itself) is
  passed through unchanged from then on;
- ``finish_reason`` ``stop`` becomes ``tool_calls`` when the normaliser produced tool calls;
- when the request offered tools (``offered``), an answer that is wholly bare JSON naming an offered tool
  becomes tool calls too (:mod:`helexa.translate.toolcalls` has the exact rule); its text is held back only
  while it can still become such a call.

Events that need no change are forwarded as the engine's own bytes; only events whose text contains a marker
(or follows one) are decoded and re-encoded.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from helexa.sse import EventFramer, event_data
from helexa.translate.toolcalls import bare_tool_calls, may_become_call

__all__ = ["ChatNormaliser", "MarkerSplitter", "Markers", "Piece", "SSENormaliser"]

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Markers:
    """The marker pairs to look for."""

    think: tuple[str, str] = ("<think>", "</think>")
    tool: tuple[str, str] = ("<tool_call>", "</tool_call>")

    @property
    def first_bytes(self) -> tuple[bytes, ...]:
        """What must appear in raw event bytes for a marker to possibly start there (JSON may escape '<')."""
        firsts = {self.think[0][0], self.tool[0][0]}
        out = [c.encode() for c in firsts]
        out += [f"\\u{ord(c):04x}".encode() for c in firsts if not c.isalnum()]
        return tuple(out)


@dataclass(frozen=True, slots=True)
class Piece:
    """One piece of normalised output: ``kind`` is content, reasoning or tool (then name and arguments)."""

    kind: str
    text: str = ""
    name: str = ""
    arguments: str = ""


def _held_back(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a marker (it may complete later)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if marker.startswith(text[-n:]):
                best = n
                break
    return best


def _parse_tool_call(body: str) -> tuple[str, str] | None:
    try:
        call = _decoder.decode(body.strip())
    except msgspec.DecodeError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return None
    arguments = call.get("arguments", call.get("parameters", {}))
    if isinstance(arguments, str):
        return call["name"], arguments
    if not isinstance(arguments, dict):
        return None
    return call["name"], _encoder.encode(arguments).decode()


@dataclass
class MarkerSplitter:
    """Splits one choice's text stream into content, reasoning and tool-call pieces."""

    markers: Markers = field(default_factory=Markers)
    mode: str = "text"  # text | think | tool
    pending: str = ""

    def feed(self, text: str) -> list[Piece]:
        """Consume ``text``; return the pieces that are certain now (a possible marker prefix is held back)."""
        out: list[Piece] = []
        buf = self.pending + text
        self.pending = ""
        think, tool = self.markers.think, self.markers.tool
        while buf:
            if self.mode == "text":
                hits = [(buf.find(m), m) for m in (think[0], tool[0]) if m in buf]
                if not hits:
                    keep = _held_back(buf, (think[0], tool[0]))
                    self._emit(out, "content", buf[: len(buf) - keep])
                    self.pending = buf[len(buf) - keep :]
                    return out
                index, marker = min(hits)
                self._emit(out, "content", buf[:index])
                buf = buf[index + len(marker) :]
                self.mode = "think" if marker == think[0] else "tool"
            elif self.mode == "think":
                index = buf.find(think[1])
                if index < 0:
                    keep = _held_back(buf, (think[1],))
                    self._emit(out, "reasoning", buf[: len(buf) - keep])
                    self.pending = buf[len(buf) - keep :]
                    return out
                self._emit(out, "reasoning", buf[:index])
                buf = buf[index + len(think[1]) :]
                self.mode = "text"
            else:  # tool: hold everything until the end marker, then parse
                index = buf.find(tool[1])
                if index < 0:
                    self.pending = buf
                    return out
                out.append(self._tool(buf[:index]))
                buf = buf[index + len(tool[1]) :]
                self.mode = "text"
        return out

    def finish(self) -> list[Piece]:
        """Flush at the end of the text: held-back text is what it looked like, an unfinished call is text."""
        out: list[Piece] = []
        if self.mode == "tool":
            self._emit(out, "content", self.markers.tool[0] + self.pending)
        else:
            self._emit(out, "reasoning" if self.mode == "think" else "content", self.pending)
        self.pending, self.mode = "", "text"
        return out

    def _tool(self, body: str) -> Piece:
        parsed = _parse_tool_call(body)
        if parsed is None:
            return Piece("content", f"{self.markers.tool[0]}{body}{self.markers.tool[1]}")
        return Piece("tool", name=parsed[0], arguments=parsed[1])

    @staticmethod
    def _emit(out: list[Piece], kind: str, text: str) -> None:
        if not text:
            return
        if out and out[-1].kind == kind:
            out[-1] = Piece(kind, out[-1].text + text)
        else:
            out.append(Piece(kind, text))

    @property
    def idle(self) -> bool:
        """Nothing held back and outside any marker: raw text without a marker can pass untouched."""
        return self.mode == "text" and not self.pending


def _new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class _Choice:
    splitter: MarkerSplitter
    structured: bool = False  # the engine emits reasoning/tool_calls itself: pass through
    tool_calls: int = 0
    role_sent: bool = False
    bare_decided: bool = False  # whether the answer can no longer be a bare JSON tool call
    held: str = ""  # content held back while it may still become one


class ChatNormaliser:
    """Normalises chat completion chunks (streaming) or whole responses, one response at a time.

    ``offered``: the names of the tools the request offered (empty: no bare-JSON tool-call detection).
    """

    def __init__(self, markers: Markers | None = None, offered: frozenset[str] = frozenset()) -> None:
        self.markers = markers or Markers()
        self.offered = offered
        self._choices: dict[int, _Choice] = {}
        self._last_chunk: dict[str, Any] | None = None

    def _new_choice(self) -> _Choice:
        return _Choice(MarkerSplitter(self.markers), bare_decided=not self.offered)

    def _bare(self, state: _Choice, pieces: list[Piece], final: bool) -> list[Piece]:
        """Hold content back while the answer may still be a bare JSON tool call; at the end, decide."""
        if state.bare_decided:
            return pieces
        out: list[Piece] = []
        for piece in pieces:
            if state.bare_decided or piece.kind == "reasoning":
                out.append(piece)
            elif piece.kind == "content":
                state.held += piece.text
                if not may_become_call(state.held):
                    out.append(Piece("content", state.held))
                    state.bare_decided, state.held = True, ""
            else:  # the model writes marker tool calls: it is not answering with bare JSON
                if state.held:
                    out.append(Piece("content", state.held))
                out.append(piece)
                state.bare_decided, state.held = True, ""
        if final and not state.bare_decided:
            calls = bare_tool_calls(state.held, self.offered)
            if calls:
                out += [Piece("tool", name=name, arguments=arguments) for name, arguments in calls]
            elif state.held:
                out.append(Piece("content", state.held))
            state.bare_decided, state.held = True, ""
        return out

    def _choice(self, index: int) -> _Choice:
        if index not in self._choices:
            self._choices[index] = self._new_choice()
        return self._choices[index]

    @property
    def idle(self) -> bool:
        """No choice holds anything back: an event without marker characters may pass as it is."""
        if self.offered and not self._choices:
            return False  # the first content decides whether the answer may be a bare JSON call
        return all(
            c.structured or (c.splitter.idle and not c.tool_calls and c.bare_decided) for c in self._choices.values()
        )

    # -------------------------------------------------------------------------------------- streaming

    def chunk(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """Normalise one ``chat.completion.chunk``; return the chunks to send instead (possibly several)."""
        choices = chunk.get("choices")
        if not choices:
            return [chunk]
        self._last_chunk = chunk
        out: list[dict[str, Any]] = []
        for choice in choices:
            out += self._choice_chunks(chunk, choice)
        if chunk.get("usage") and out:
            out[-1]["usage"] = chunk["usage"]
        return out

    def _choice_chunks(self, chunk: dict[str, Any], choice: dict[str, Any]) -> list[dict[str, Any]]:
        state = self._choice(choice.get("index", 0))
        delta = choice.get("delta") or {}
        if (delta.get("reasoning_content") or delta.get("tool_calls")) and not state.structured:
            state.structured = True
            if state.held:  # content held for bare-JSON detection goes out first, unchanged
                held = self._with_choice(chunk, {**choice, "delta": {"content": state.held}, "finish_reason": None})
                state.held, state.bare_decided = "", True
                return [held, self._with_choice(chunk, choice)]
        if state.structured:
            return [self._with_choice(chunk, choice)]
        pieces = state.splitter.feed(delta.get("content") or "")
        finish = choice.get("finish_reason")
        if finish is not None:
            pieces += state.splitter.finish()
        pieces = self._bare(state, pieces, final=finish is not None)
        deltas = [self._delta(state, p) for p in pieces]
        extra = {k: v for k, v in delta.items() if k not in ("content", "role")}
        if "role" in delta and not state.role_sent:
            state.role_sent = True
            if deltas:
                deltas[0] = {"role": delta["role"], **deltas[0]}
            else:
                deltas.append({"role": delta["role"], "content": delta.get("content") or ""})
        if finish is not None and not deltas:
            deltas.append({})
        if extra and deltas:
            deltas[-1].update(extra)
        if finish == "stop" and state.tool_calls:
            finish = "tool_calls"
        out = []
        for i, d in enumerate(deltas):
            last = i == len(deltas) - 1
            out.append(self._with_choice(chunk, {**choice, "delta": d, "finish_reason": finish if last else None}))
        return out

    def _delta(self, state: _Choice, piece: Piece) -> dict[str, Any]:
        if piece.kind == "content":
            return {"content": piece.text}
        if piece.kind == "reasoning":
            return {"reasoning_content": piece.text}
        index = state.tool_calls
        state.tool_calls += 1
        function = {"name": piece.name, "arguments": piece.arguments}
        return {"tool_calls": [{"index": index, "id": _new_call_id(), "type": "function", "function": function}]}

    @staticmethod
    def _with_choice(chunk: dict[str, Any], choice: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        out["choices"] = [choice]
        return out

    def flush(self) -> list[dict[str, Any]]:
        """At the end of a stream that never sent a finish_reason: release what is held back."""
        if self._last_chunk is None:
            return []
        out = []
        for index, state in self._choices.items():
            if state.structured:
                continue
            for piece in self._bare(state, state.splitter.finish(), final=True):
                choice = {"index": index, "delta": self._delta(state, piece), "finish_reason": None}
                out.append(self._with_choice(self._last_chunk, choice))
        return out

    # -------------------------------------------------------------------------------------- whole responses

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """Normalise a non-streaming ``chat.completion`` (returns a new dict)."""
        body = copy.copy(body)
        body["choices"] = [self._message_choice(c) for c in body.get("choices") or []]
        return body

    def _message_choice(self, choice: dict[str, Any]) -> dict[str, Any]:
        message = choice.get("message") or {}
        content = message.get("content")
        if not isinstance(content, str) or message.get("reasoning_content") or message.get("tool_calls"):
            return choice
        state = self._new_choice()
        pieces = self._bare(state, state.splitter.feed(content) + state.splitter.finish(), final=True)
        text = "".join(p.text for p in pieces if p.kind == "content")
        reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
        calls = []
        for piece in pieces:
            if piece.kind == "tool":
                call = self._delta(state, piece)["tool_calls"][0]
                calls.append({k: v for k, v in call.items() if k != "index"})
        message = {**message, "content": text if text or not calls else None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = calls
        finish = choice.get("finish_reason")
        if finish == "stop" and calls:
            finish = "tool_calls"
        return {**choice, "message": message, "finish_reason": finish}


class SSENormaliser:
    """Applies :class:`ChatNormaliser` to a server-sent-event byte stream, chunk boundaries anywhere."""

    def __init__(self, markers: Markers | None = None, offered: frozenset[str] = frozenset()) -> None:
        self.chat = ChatNormaliser(markers, offered)
        self._first_bytes = self.chat.markers.first_bytes
        self._framer = EventFramer()

    def feed(self, data: bytes) -> bytes:
        """Consume raw bytes from the engine; return the bytes to send to the client now."""
        events = self._framer.feed(data)
        if not events:
            return b""
        if self.chat.idle and not any(b in events for b in self._first_bytes):
            return events  # the fast path: nothing to change, forward the engine's bytes
        return b"".join(self._event(e + b"\n\n") for e in events[:-2].split(b"\n\n"))

    def close(self) -> bytes:
        """End of stream: anything still held back, then whatever partial bytes are left."""
        flushed = b"".join(self._encode(c) for c in self.chat.flush())
        return flushed + self._framer.close()

    def _event(self, event: bytes) -> bytes:
        if self.chat.idle and not any(b in event for b in self._first_bytes):
            return event  # the fast path: nothing to change, forward the engine's bytes
        data = event_data(event)
        if data is None:
            return event
        payload = data.strip()
        if payload == b"[DONE]":
            return b"".join(self._encode(c) for c in self.chat.flush()) + event
        try:
            chunk = _decoder.decode(payload)
        except msgspec.DecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        return b"".join(self._encode(c) for c in self.chat.chunk(chunk))

    @staticmethod
    def _encode(chunk: dict[str, Any]) -> bytes:
        return b"data: " + _encoder.encode(chunk) + b"\n\n"
