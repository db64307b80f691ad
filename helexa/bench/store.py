"""The benchmark database: one SQLite file (the standard library's ``sqlite3``), created on first use.

A *cell* is (target, build, model, scenario, concurrency); every measurement of a cell is one row of
``results``, stamped with the run that made it (when, against what: helexa version and git sha, engine,
devices). Failed measurements are rows too, with their error.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = [
    "Build",
    "Result",
    "Store",
    "read_rows",
]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    target TEXT NOT NULL,
    build TEXT NOT NULL,
    helexa_version TEXT NOT NULL,
    git_sha TEXT NOT NULL,
    engine TEXT NOT NULL,
    devices TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    measured_at REAL NOT NULL,
    model TEXT NOT NULL,
    scenario TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    requests INTEGER NOT NULL DEFAULT 0,
    ttft_p50 REAL, ttft_p95 REAL, itl_p50 REAL, tokens_per_second REAL,
    latency_p50 REAL, latency_p95 REAL, completion_tokens INTEGER,
    swap_seconds REAL,
    detail TEXT NOT NULL DEFAULT '',
    quant TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS results_cell ON results (model, scenario, concurrency);
"""


@dataclass(frozen=True)
class Build:
    """What was measured: the target and its software (the stamp of a run)."""

    target: str
    helexa_version: str
    git_sha: str
    engine: str = ""
    devices: str = ""

    @property
    def id(self) -> str:
        """``version+sha`` (the sha cut to 12), the name a build is compared by."""
        return f"{self.helexa_version}+{self.git_sha[:12]}" if self.git_sha else self.helexa_version


@dataclass
class Result:
    """One measurement of a cell; figures in seconds (tokens per second for ``tokens_per_second``)."""

    model: str
    scenario: str
    concurrency: int
    ok: bool
    error: str = ""
    requests: int = 0
    ttft_p50: float | None = None
    ttft_p95: float | None = None
    itl_p50: float | None = None
    tokens_per_second: float | None = None
    latency_p50: float | None = None
    latency_p95: float | None = None
    completion_tokens: int | None = None
    swap_seconds: float | None = None
    detail: str = ""  # what a swap measured: "cold load", "wake from sleep", "unload A + load B"
    quant: str = ""  # the model's quantisation, as the target's catalogue names it


RESULT_FIELDS = [f.name for f in fields(Result)]


class Store:
    """The database at ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:
                yield db
        finally:
            db.close()

    def start_run(self, build: Build) -> int:
        """A new run against ``build``; its id."""
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, target, build, helexa_version, git_sha, engine, devices) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (time.time(), build.target, build.id, build.helexa_version, build.git_sha, build.engine, build.devices),
            )
            return int(cursor.lastrowid or 0)

    def add(self, run_id: int, result: Result) -> None:
        """Record one measurement."""
        row = asdict(result)
        columns = ", ".join(["run_id", "measured_at", *row])
        marks = ", ".join("?" * (len(row) + 2))
        with self._connect() as db:
            db.execute(f"INSERT INTO results ({columns}) VALUES ({marks})", (run_id, time.time(), *row.values()))

    def measured(self, build: Build, model: str, scenario: str, concurrency: int) -> int:
        """How many successful measurements the cell has for ``build``."""
        with self._connect() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM results JOIN runs ON runs.id = results.run_id WHERE runs.target = ? AND "
                "runs.build = ? AND model = ? AND scenario = ? AND concurrency = ? AND ok = 1",
                (build.target, build.id, model, scenario, concurrency),
            ).fetchone()
            return int(row[0])

    def rows(self) -> list[dict[str, object]]:
        """Every measurement with its run's stamp, oldest first."""
        with self._connect() as db:
            return _rows(db)


_ROWS = (
    "SELECT runs.target, runs.build, runs.engine, runs.devices, results.* FROM results "
    "JOIN runs ON runs.id = results.run_id ORDER BY results.measured_at"
)


def _rows(db: sqlite3.Connection) -> list[dict[str, object]]:
    return [dict(row) for row in db.execute(_ROWS).fetchall()]


def read_rows(path: Path, *, timeout: float) -> list[dict[str, object]]:
    """:meth:`Store.rows` of the database at ``path`` opened read-only (no schema written, no write lock
    taken), waiting at most ``timeout`` seconds for a writer's lock.

    :raises sqlite3.Error: still locked, or not a bench database.
    """
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout)
    db.row_factory = sqlite3.Row
    try:
        return _rows(db)
    finally:
        db.close()
