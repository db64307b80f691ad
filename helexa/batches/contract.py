"""What every batch store keeps and how the API and the runner use it: the :class:`Batches` contract
(:class:`~helexa.batches.store.BatchStore`, SQLite beside a gateway; :class:`~helexa.batches.shared.SharedBatchStore`,
the cluster's store), a record's fields, a new batch, and spooling an upload to disk. No I/O of its own but
:func:`spool`'s, through the runner it is given.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from helexa.batches.formats import BatchLine, Parsed, file_id

__all__ = [
    "ACTIVE",
    "BATCH_NUMBERS",
    "BATCH_TEXT",
    "FILE_FIELDS",
    "PIECE",
    "TIMES",
    "Batches",
    "NewBatch",
    "spool",
]

PIECE = 256 * 1024  # a file's content is read and sent in pieces this large
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a runner has work to do on these
TIMES = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
# a batch record's fields (the columns of ``batches``): text, and whole numbers (counts, Unix times)
BATCH_TEXT = ("id", "owner", "status", "endpoint", "input_file_id", "completion_window", "model", "metadata")
BATCH_TEXT += ("errors", "output_file_id", "error_file_id")
BATCH_NUMBERS = ("created_at", "total", "completed", "failed", "input_tokens", "output_tokens", "expires_at", *TIMES)
BATCH_NUMBERS += ("output_expires_after",)  # seconds an output file is kept (None: until deleted)
FILE_FIELDS = ("id", "owner", "purpose", "filename", "bytes", "created_at", "expires_at")  # a file record's


@dataclass(frozen=True)
class NewBatch:
    """What a new batch is made of: its owner (a key's name), the endpoint its lines go to, the input file, the
    completion window (as asked, and in seconds), metadata, the file's lines as checked, and how long its output
    files are kept (seconds from when they are written; ``None``: until deleted)."""

    owner: str
    endpoint: str
    input_file_id: str
    window: str
    window_seconds: int
    metadata: dict[str, str] | None
    parsed: Parsed
    output_seconds: int | None = None


class Batches(Protocol):
    """Where files and batches are kept, as the API and the runner use it: :class:`BatchStore` (SQLite beside a
    gateway) or :class:`helexa.batches.shared.SharedBatchStore` (the cluster's store). Records are plain dicts
    with the fields above (BATCH_TEXT, BATCH_NUMBERS, FILE_FIELDS) (``None`` for what is not set)."""

    def may_run(self) -> bool:
        """Whether this gateway process runs the batches now (one does)."""
        ...

    async def stage(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, int] | None: ...

    async def add_file(
        self, owner: str, purpose: str, filename: str, staged: Path, size: int, *, expires_at: int | None = None
    ) -> dict[str, Any]: ...

    async def expire_files(self, now: int) -> list[str]: ...

    async def get_file(self, file: str) -> dict[str, Any] | None: ...

    async def list_files(
        self, owner: str, purpose: str, after: str, limit: int, ascending: bool
    ) -> tuple[list[dict[str, Any]], bool]: ...

    async def delete_file(self, file: str) -> bool: ...

    def content(self, file: str) -> AsyncIterator[bytes]: ...

    async def read_file(self, file: str, limit: int) -> bytes: ...

    async def create_batch(self, new: NewBatch) -> dict[str, Any]: ...

    async def get_batch(self, batch: str) -> dict[str, Any] | None: ...

    async def list_batches(
        self, owner: str | None, after: str, limit: int, *, messages: bool | None = None, ascending: bool = False
    ) -> tuple[list[dict[str, Any]], bool]: ...

    async def delete_batch(self, batch: str) -> bool: ...

    async def active(self) -> list[dict[str, Any]]: ...

    async def pending(self, batch: str, after: int, limit: int) -> list[BatchLine]: ...

    async def record(
        self, batch: str, index: int, *, status: int, request_id: str, result: bytes, tokens: tuple[int, int]
    ) -> bool: ...

    async def move(self, batch: str, to: str, when: tuple[str, ...]) -> dict[str, Any] | None: ...

    async def finish(self, batch: str, final: str) -> dict[str, Any]: ...

    async def close(self) -> None: ...


Run = Callable[..., Awaitable[Any]]  # runs a blocking call off the event loop: run(call, *args)


async def spool(run: Run, directory: Path, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, int] | None:
    """Write ``chunks`` to a new file in ``directory`` (created if need be) through ``run``: ``(path, size)``, or
    ``None`` — and nothing kept — when they grew past ``limit`` bytes. A failure or a cancellation removes what
    was written."""

    def create() -> Path:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return directory / f".upload-{file_id()}"

    path = await run(create)
    handle = await run(path.open, "wb")
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                break
            await run(handle.write, chunk)
    except BaseException:
        await run(_discard, handle, path)
        raise
    if size > limit:
        await run(_discard, handle, path)
        return None
    await run(_seal, handle)
    return path, size


def _discard(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def _seal(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
