"""Log lines people (and journald, and Loki) can read: the role on every line, text or JSON.

Every line is one line: control characters in a message (a percent-decoded path, a header, an engine's
output — text that came from outside) are written as escapes (``\\r``, ``\\n``, ``\\x1b``), so no one can
forge a log line; a traceback's lines are indented under the line that reports it.

``role`` comes from the logger's name (``helexa.gateway…`` → gateway, ``helexa.neuron…`` and engines → neuron),
from the access logger (the app that answered), else the process's role. JSON lines carry the same fields plus
whatever a call passed in ``extra`` (the access lines: method, path, status, duration, request id).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable

__all__ = ["JsonFormatter", "RoleFilter", "TextFormatter", "escape_controls", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(role)-7s %(name)s: %(message)s"
_PREFIXES = (("helexa.gateway", "gateway"), ("helexa.neuron", "neuron"), ("helexa.engine", "neuron"))
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "role"}


_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character (and Unicode line separator) written as an escape."""
    if not _CONTROLS.search(text):
        return text
    return _CONTROLS.sub(lambda m: _NAMED.get(m.group()) or ascii(m.group())[1:-1], text)


class _Clock:
    """``time.strftime`` of a record's second, computed once per second (every access line needs one)."""

    def __init__(self, fmt: str, converter: Callable[[float | None], time.struct_time]) -> None:
        self.fmt, self.converter = fmt, converter
        self._last: tuple[int, str] = (-1, "")

    def __call__(self, created: float) -> str:
        second = int(created)
        last = self._last
        if last[0] != second:
            last = self._last = (second, time.strftime(self.fmt, self.converter(created)))
        return last[1]


class TextFormatter(logging.Formatter):
    """The text format: one line per record, its message's control characters escaped; a traceback follows
    on lines of its own, each indented."""

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._clock = _Clock(self.default_time_format, self.converter)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """``2026-12-03 00:00:00,123``, as :class:`logging.Formatter` writes it, its second formatted once."""
        if datefmt:
            return super().formatTime(record, datefmt)
        return self.default_msec_format % (self._clock(record.created), record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The line, with the message escaped."""
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: object) -> str:
        """The traceback, every line indented (none can pass for a log line of its own)."""
        text = super().formatException(ei)  # type: ignore[arg-type]
        return "\n".join("    " + escape_controls(line) for line in text.splitlines())


class RoleFilter(logging.Filter):
    """Sets ``record.role`` when the call did not (``extra={"role": …}``)."""

    def __init__(self, default: str) -> None:
        super().__init__()
        self.default = default

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; only adds the role."""
        if not hasattr(record, "role"):
            record.role = next((role for prefix, role in _PREFIXES if record.name.startswith(prefix)), self.default)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (RFC 3339, UTC), ``level``, ``role``, ``logger``, ``message``, extras."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON line."""
        entry = {
            "ts": f"{self._clock(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "role": getattr(record, "role", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, log_format: str, role: str) -> None:
    """Configure the root logger once: ``level`` (debug … error), ``log_format`` (``text`` or ``json``)."""
    # nothing a helexa line shows, so no record pays for it (the logging HOWTO's "Optimization"): the thread,
    # process and caller of each call
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk per record: no format uses pathname or lineno
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RoleFilter(role))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
