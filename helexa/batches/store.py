"""Where files and batches live: a SQLite database and a ``files/`` folder in one directory.

Durable against a killed process: every change is one transaction (WAL, ``synchronous=FULL``). A line's result
is written once — the update that stores it only matches a line not yet done, and the batch's counts move in the
same transaction — so a line run again after a restart (it was in flight when the gateway died) is never counted
or written twice. Output and error files get ids derived from their batch's, so finishing a batch again replaces
them. Nothing is created on disk before the first upload: a gateway that never sees a batch leaves no trace.

Calls are blocking (``sqlite3``); :class:`BatchStore` runs them on one thread of its own, so the event loop never
waits on the disk and the connection is only ever used by that thread. Several processes may open one directory
(a gateway's workers): SQLite's locks keep them consistent, ``busy_timeout`` makes them wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from helexa.batches.contract import ACTIVE, FILE_FIELDS, PIECE, TIMES, NewBatch, spool
from helexa.batches.formats import (
    MESSAGES,
    BatchLine,
    batch_id,
    file_id,
    finished_line,
    result_file_id,
)

__all__ = ["BatchStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL, filename TEXT NOT NULL,
  bytes INTEGER NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER
);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, created_at);
CREATE TABLE IF NOT EXISTS batches (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL, status TEXT NOT NULL,
  endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL, completion_window TEXT NOT NULL, model TEXT,
  metadata TEXT, errors TEXT, output_file_id TEXT, error_file_id TEXT,
  total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0, failed INTEGER NOT NULL DEFAULT 0,
  input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
  expires_at INTEGER, in_progress_at INTEGER, finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER,
  expired_at INTEGER, cancelling_at INTEGER, cancelled_at INTEGER, output_expires_after INTEGER
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, created_at);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
CREATE TABLE IF NOT EXISTS lines (
  batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL, body BLOB NOT NULL,
  done INTEGER NOT NULL DEFAULT 0, status INTEGER, request_id TEXT, result BLOB,
  PRIMARY KEY (batch_id, idx)
) WITHOUT ROWID;
"""
# columns added since the first release of the schema: (table, column, type), added to an older database
_ADDED = (("files", "expires_at", "INTEGER"), ("batches", "output_expires_after", "INTEGER"))


def _now() -> int:
    return int(time.time())


class BatchStore:
    """Files and batches kept in ``directory`` (created at the first write)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        self._conn: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self._lock_fd: int | None = None

    @property
    def files_dir(self) -> Path:
        return self.directory / "files"

    def file_path(self, file: str) -> Path:
        """Where the content of file ``file`` (an id checked by the caller) is."""
        return self.files_dir / file

    async def _run(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(call, *args, **kwargs))

    def _db(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            path = self.directory / "batches.sqlite"
            if not create and not path.exists():
                return None
            self.files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            for table, column, kind in _ADDED:  # a database an older helexa made
                if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            conn.execute("CREATE INDEX IF NOT EXISTS files_expiry ON files (expires_at)")
            self._conn = conn
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._db(create=True)
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def close(self) -> None:
        """Close the database (pending calls finish first)."""

        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await self._run(close)
        self._thread.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------------------------------------- files

    async def add_file(
        self, owner: str, purpose: str, filename: str, staged: Path, size: int, *, expires_at: int | None = None
    ) -> dict[str, Any]:
        """Keep the upload at ``staged`` (from :meth:`stage`; moved) as a new file of ``owner``, until
        ``expires_at`` (a Unix time; ``None``: until deleted)."""
        return await self._run(self._add_file, owner, purpose, filename, staged, size, expires_at=expires_at)

    async def stage(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, int] | None:
        """Write an upload's ``chunks`` to a new file in the files folder (for :meth:`add_file`, which moves it):
        see :func:`spool`."""
        return await spool(self._run, self.files_dir, chunks, limit)

    def _add_file(
        self, owner: str, purpose: str, filename: str, staged: Path, size: int, *, expires_at: int | None
    ) -> dict[str, Any]:
        record = {"id": file_id(), "owner": owner, "purpose": purpose, "filename": filename, "bytes": size}
        record |= {"created_at": _now(), "expires_at": expires_at}
        os.replace(staged, self.file_path(record["id"]))
        with self._write() as conn:
            conn.execute(
                "INSERT INTO files (id, owner, purpose, filename, bytes, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                tuple(record[k] for k in FILE_FIELDS),
            )
        return record

    async def expire_files(self, now: int) -> list[str]:
        """Delete the files whose ``expires_at`` passed at ``now`` (their content too); their ids."""
        return await self._run(self._expire_files, now)

    def _expire_files(self, now: int) -> list[str]:
        conn = self._db(create=False)
        if conn is None:
            return []
        gone = [r[0] for r in conn.execute("SELECT id FROM files WHERE expires_at <= ? LIMIT 1000", (now,))]
        for file in gone:
            self._delete_file(file)
        return gone

    async def get_file(self, file: str) -> dict[str, Any] | None:
        return await self._run(self._get, "files", file)

    def _get(self, table: str, key: str) -> dict[str, Any] | None:
        conn = self._db(create=False)
        if conn is None:
            return None
        row = conn.execute(f"SELECT * FROM {table} WHERE id = ?", (key,)).fetchone()
        return dict(row) if row is not None else None

    async def list_files(
        self, owner: str, purpose: str, after: str, limit: int, ascending: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """``owner``'s files (of ``purpose``, when given) after the one called ``after``, at most ``limit``; and
        whether more follow."""
        where, args = "owner = ?", [owner]
        if purpose:
            where, args = where + " AND purpose = ?", [*args, purpose]
        return await self._run(self._page, "files", where, args, after=after, limit=limit, ascending=ascending)

    def _page(
        self, table: str, where: str, args: list[Any], *, after: str, limit: int, ascending: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        conn = self._db(create=False)
        if conn is None:
            return [], False
        order = "ASC" if ascending else "DESC"  # rowid: the order they were made in (times are whole seconds)
        if after:
            mark = conn.execute(f"SELECT rowid FROM {table} WHERE id = ?", (after,)).fetchone()
            if mark is not None:
                where += f" AND rowid {'>' if ascending else '<'} ?"
                args = [*args, mark[0]]
        rows = conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY rowid {order} LIMIT ?", (*args, limit + 1))
        rows = rows.fetchall()
        return [dict(r) for r in rows[:limit]], len(rows) > limit

    async def delete_file(self, file: str) -> bool:
        """Delete file ``file`` (its content too); whether it was there."""
        return await self._run(self._delete_file, file)

    def _delete_file(self, file: str) -> bool:
        if self._db(create=False) is None:
            return False
        with self._write() as conn:
            gone = conn.execute("DELETE FROM files WHERE id = ?", (file,)).rowcount == 1
        with contextlib.suppress(FileNotFoundError):
            self.file_path(file).unlink()
        return gone

    async def content(self, file: str) -> AsyncIterator[bytes]:
        """The content of file ``file``, in pieces of :data:`PIECE` bytes (read off the event loop)."""
        handle = await self._run(self.file_path(file).open, "rb")
        try:
            while piece := await self._run(handle.read, PIECE):
                yield piece
        finally:
            await self._run(handle.close)

    def may_run(self) -> bool:
        """Whether this process runs the directory's batches: the one holding ``runner.lock`` in it (taken here
        when it is free; a gateway's workers share the directory, one of them runs)."""
        if self._lock_fd is not None:
            return True
        if not self.directory.is_dir():
            return False  # nothing was ever uploaded
        fd = os.open(self.directory / "runner.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def read_file(self, file: str, limit: int) -> bytes:
        """The content of file ``file``, at most ``limit`` bytes (an input file is read whole to be checked)."""

        def read() -> bytes:
            with self.file_path(file).open("rb") as fh:
                return fh.read(limit)

        return await self._run(read)

    # ----------------------------------------------------------------------------------------------- batches

    async def create_batch(self, new: NewBatch) -> dict[str, Any]:
        """A batch as ``new`` describes it, with the lines of its ``parsed`` file; ``failed`` at once when that
        holds errors."""
        return await self._run(self._create_batch, new)

    def _create_batch(self, new: NewBatch) -> dict[str, Any]:
        parsed = new.parsed
        now, made = _now(), batch_id(new.endpoint)
        failed = bool(parsed.errors)
        errors = json.dumps({"object": "list", "data": [e.as_dict() for e in parsed.errors]}) if failed else None
        with self._write() as conn:
            conn.execute(
                "INSERT INTO batches (id, owner, created_at, status, endpoint, input_file_id, completion_window,"
                " model, metadata, errors, total, expires_at, in_progress_at, failed_at, output_expires_after)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    made,
                    new.owner,
                    now,
                    "failed" if failed else "in_progress",
                    new.endpoint,
                    new.input_file_id,
                    new.window,
                    parsed.model or None,
                    json.dumps(new.metadata) if new.metadata is not None else None,
                    errors,
                    len(parsed.lines),
                    now + new.window_seconds,
                    None if failed else now,
                    now if failed else None,
                    new.output_seconds,
                ),
            )
            conn.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body) VALUES (?, ?, ?, ?)",
                ((made, line.index, line.custom_id, line.body) for line in parsed.lines),
            )
        batch = self._get("batches", made)
        assert batch is not None
        return batch

    async def get_batch(self, batch: str) -> dict[str, Any] | None:
        return await self._run(self._get, "batches", batch)

    async def list_batches(
        self, owner: str | None, after: str, limit: int, *, messages: bool | None = None, ascending: bool = False
    ) -> tuple[list[dict[str, Any]], bool]:
        """``owner``'s batches (everyone's for ``None``), newest first (oldest first: ``ascending``), after
        ``after``; and whether more follow. ``messages``: only Anthropic message batches (``True``), only OpenAI's
        (``False``), both (``None``)."""
        where, args = ("owner = ?", [owner]) if owner is not None else ("1 = 1", [])
        if messages is not None:
            where, args = f"{where} AND endpoint {'=' if messages else '!='} ?", [*args, MESSAGES]
        return await self._run(self._page, "batches", where, args, after=after, limit=limit, ascending=ascending)

    async def delete_batch(self, batch: str) -> bool:
        """Delete ``batch`` — its record, lines and result files; whether it was there. Only an ended batch
        (the caller checks): a runner holds no line of it."""
        return await self._run(self._delete_batch, batch)

    def _delete_batch(self, batch: str) -> bool:
        if self._db(create=False) is None:
            return False
        results = [result_file_id(batch, kind) for kind in ("output", "errors")]
        with self._write() as conn:
            gone = conn.execute("DELETE FROM batches WHERE id = ?", (batch,)).rowcount == 1
            conn.execute("DELETE FROM lines WHERE batch_id = ?", (batch,))
            conn.executemany("DELETE FROM files WHERE id = ?", ((file,) for file in results))
        for file in results:
            with contextlib.suppress(FileNotFoundError):
                self.file_path(file).unlink()
        return gone

    async def active(self) -> list[dict[str, Any]]:
        """Every batch a runner has work on, oldest first."""

        def active() -> list[dict[str, Any]]:
            conn = self._db(create=False)
            if conn is None:
                return []
            marks = ", ".join("?" * len(ACTIVE))
            query = f"SELECT * FROM batches WHERE status IN ({marks}) ORDER BY created_at, id"
            return [dict(r) for r in conn.execute(query, ACTIVE)]

        return await self._run(active)

    async def pending(self, batch: str, after: int, limit: int) -> list[BatchLine]:
        """Lines of ``batch`` not done yet, after index ``after``, in file order, at most ``limit``."""

        def pending() -> list[BatchLine]:
            conn = self._db(create=False)
            assert conn is not None
            rows = conn.execute(
                "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND idx > ? AND done = 0"
                " ORDER BY idx LIMIT ?",
                (batch, after, limit),
            )
            return [BatchLine(r["idx"], r["custom_id"], r["body"]) for r in rows]

        return await self._run(pending)

    async def record(
        self, batch: str, index: int, *, status: int, request_id: str, result: bytes, tokens: tuple[int, int]
    ) -> bool:
        """Store line ``index``'s answer (``status``, the engine's or helexa's JSON ``result``) and count it,
        once: ``False`` when it was done already."""
        return await self._run(
            self._record, batch, index, status=status, request_id=request_id, result=result, tokens=tokens
        )

    def _record(
        self, batch: str, index: int, *, status: int, request_id: str, result: bytes, tokens: tuple[int, int]
    ) -> bool:
        with self._write() as conn:
            stored = conn.execute(
                "UPDATE lines SET done = 1, status = ?, request_id = ?, result = ?"
                " WHERE batch_id = ? AND idx = ? AND done = 0",
                (status, request_id, result, batch, index),
            ).rowcount
            if not stored:
                return False
            column = "completed" if 200 <= status < 300 else "failed"
            conn.execute(
                f"UPDATE batches SET {column} = {column} + 1, input_tokens = input_tokens + ?,"
                " output_tokens = output_tokens + ? WHERE id = ?",
                (*tokens, batch),
            )
        return True

    async def move(self, batch: str, to: str, when: tuple[str, ...]) -> dict[str, Any] | None:
        """Set ``batch``'s status to ``to`` (stamping ``<to>_at``) if it is one of ``when`` now; the batch as it
        is then, or ``None`` when there is no such batch."""
        return await self._run(self._move, batch, to, when)

    def _move(self, batch: str, to: str, when: tuple[str, ...]) -> dict[str, Any] | None:
        if self._db(create=False) is None:
            return None
        stamp = f"{to}_at"
        assert stamp in TIMES
        marks = ", ".join("?" * len(when))
        with self._write() as conn:
            conn.execute(
                f"UPDATE batches SET status = ?, {stamp} = ? WHERE id = ? AND status IN ({marks})",
                (to, _now(), batch, *when),
            )
        return self._get("batches", batch)

    async def finish(self, batch: str, final: str) -> dict[str, Any]:
        """Write ``batch``'s output and error files from its lines' results (what each holds:
        :func:`~helexa.batches.formats.finished_line`), then set it ``final`` (completed, expired or cancelled).
        Safe to repeat: the files are replaced."""
        return await self._run(self._finish, batch, final)

    def _finish(self, batch: str, final: str) -> dict[str, Any]:
        assert final in ("completed", "expired", "cancelled")
        conn = self._db(create=True)
        assert conn is not None
        record = self._get("batches", batch)
        assert record is not None
        owner, written = record["owner"], {}
        for kind in ("output", "errors"):
            file = result_file_id(batch, kind)
            written[kind] = (file, self.files_dir / f".{file}.part", 0)
        with (
            written["output"][1].open("wb") as output,
            written["errors"][1].open("wb") as errors,
        ):
            sizes = {"output": 0, "errors": 0}
            rows = conn.execute(
                "SELECT custom_id, done, status, request_id, result FROM lines WHERE batch_id = ? ORDER BY idx",
                (batch,),
            )
            for row in rows:
                answer = (row["status"], row["request_id"], row["result"]) if row["done"] else None
                kind, data = finished_line(record["endpoint"], row["custom_id"], answer, final)
                if kind:
                    (output if kind == "output" else errors).write(data)
                    sizes[kind] += len(data)
            output.flush()
            os.fsync(output.fileno())
            errors.flush()
            os.fsync(errors.fileno())
        now = _now()
        kept = now + record["output_expires_after"] if record["output_expires_after"] else None
        ids: dict[str, str | None] = {}
        with self._write() as conn:
            for kind, (file, part, _) in written.items():
                if kind == "errors" and not sizes[kind]:
                    ids[kind] = None
                    part.unlink()
                    continue
                os.replace(part, self.file_path(file))
                conn.execute(
                    "INSERT OR REPLACE INTO files (id, owner, purpose, filename, bytes, created_at, expires_at)"
                    " VALUES (?, ?, 'batch_output', ?, ?, ?, ?)",
                    (file, owner, f"{batch}_{'output' if kind == 'output' else 'error'}.jsonl", sizes[kind], now, kept),
                )
                ids[kind] = file
            conn.execute(
                f"UPDATE batches SET status = ?, {final}_at = ?, output_file_id = ?, error_file_id = ? WHERE id = ?",
                (final, now, ids["output"], ids["errors"], batch),
            )
        done = self._get("batches", batch)
        assert done is not None
        return done
