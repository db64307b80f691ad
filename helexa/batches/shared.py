"""Files and batches kept in the cluster's store (Valkey/Redis), so every gateway of a cluster serves the same
ones: a file uploaded through one gateway, its batch created through a second and polled through a third. The
same contract as :class:`~helexa.batches.store.BatchStore` (SQLite), the same guarantees:

- a line's answer is stored once — one script sets it only if it is not there yet, takes the line out of the
  pending set and moves the batch's counts, atomically — so a line run again (by a new leader, after the old one
  died with it in flight) is never counted or written twice;
- output and error files have ids derived from their batch's: finishing a batch again replaces them.

Layout (under the cluster's prefix): ``file:<id>`` (a hash: the file's record) and ``filedata:<id>`` (a list of
pieces of :data:`PIECE` bytes); ``files:<owner>`` and ``batches:<owner>`` / ``batches:*`` (sorted sets, newest
last, for listing); ``batch:<id>`` (a hash: the batch's record and counts); ``lines:<id>`` (a hash: index →
custom id and body), ``pending:<id>`` (a sorted set of the indexes without an answer), ``results:<id>`` (a
hash: index → the answer); ``batches-active`` (a set). An upload is spooled to a local file first (so a client
that stops half-way leaves nothing in the store), then written in pieces.

The batches run on the cluster's leader (``may_run``): one runner for the whole cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec

from helexa.batches.contract import ACTIVE, BATCH_NUMBERS, BATCH_TEXT, FILE_FIELDS, PIECE, NewBatch, spool
from helexa.batches.formats import MESSAGES, BatchLine, batch_id, file_id, finished_line, result_file_id
from helexa.cluster.store import ClusterStore

__all__ = ["SharedBatchStore"]

_BATCH_FIELDS = BATCH_TEXT + BATCH_NUMBERS
_INTS = frozenset({*BATCH_NUMBERS, "bytes"})
_LINES_AT_ONCE = 500  # lines written per round trip when a batch is created

_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
redis.call('HINCRBY', KEYS[3], 'input_tokens', ARGV[4])
redis.call('HINCRBY', KEYS[3], 'output_tokens', ARGV[5])
return 1
"""
_MOVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
for i = 3, #ARGV do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    return 1
  end
end
return 1
"""


def _decode(raw: dict[bytes, bytes], fields: tuple[str, ...] | list[str]) -> dict[str, Any]:
    values = {k.decode(): v.decode() for k, v in raw.items()}
    return {f: (int(values[f]) if f in _INTS else values[f]) if f in values else None for f in fields}


class _Answer(msgspec.Struct, array_like=True):
    status: int
    request_id: str
    body: bytes


class _Line(msgspec.Struct, array_like=True):
    custom_id: str
    body: bytes


class SharedBatchStore:
    """Files and batches in the cluster ``store``; uploads spooled under ``spool_dir`` first; ``may_run()``: this
    gateway runs the batches (the cluster's leader, while the store answers)."""

    def __init__(self, store: ClusterStore, spool_dir: Path, may_run: Callable[[], bool]) -> None:
        self.store, self.spool_dir, self._may_run = store, Path(spool_dir).expanduser(), may_run
        self.redis = store.redis
        self._record = self.redis.register_script(_RECORD)
        self._move = self.redis.register_script(_MOVE)

    def may_run(self) -> bool:
        return self._may_run()

    def _key(self, *parts: str) -> str:
        return self.store.key(*parts)

    async def close(self) -> None:
        """Nothing of its own to close (the cluster's client is closed with the cluster)."""

    # ------------------------------------------------------------------------------------------------- files

    async def stage(self, chunks: AsyncIterator[bytes], limit: int) -> tuple[Path, int] | None:
        """Spool an upload to a local file (see :func:`~helexa.batches.contract.spool`)."""
        return await spool(_in_thread, self.spool_dir, chunks, limit)

    async def add_file(
        self, owner: str, purpose: str, filename: str, staged: Path, size: int, *, expires_at: int | None = None
    ) -> dict[str, Any]:
        """Write the spooled upload at ``staged`` into the store as a new file of ``owner`` (the spool removed),
        kept until ``expires_at`` (``None``: until deleted)."""
        record = {"id": file_id(), "owner": owner, "purpose": purpose, "filename": filename, "bytes": size}
        record |= {"created_at": int(time.time()), "expires_at": expires_at}
        data_key = self._key("filedata", record["id"])
        try:
            handle = await asyncio.to_thread(staged.open, "rb")
            try:
                while piece := await asyncio.to_thread(handle.read, PIECE):
                    await self.store.call(self.redis.rpush, data_key, piece)
            finally:
                await asyncio.to_thread(handle.close)
        except BaseException:
            await self.store.call(self.redis.delete, data_key)
            raise
        finally:
            await asyncio.to_thread(staged.unlink, missing_ok=True)
        await self._index_file(record)
        return record

    async def _index_file(self, record: dict[str, Any]) -> None:
        async def index() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                fields = {k: str(record[k]) for k in FILE_FIELDS if record.get(k) is not None}
                pipe.hset(self._key("file", record["id"]), mapping=fields)
                pipe.zadd(self._key("files", record["owner"]), {record["id"]: await self._seq()})
                if record.get("expires_at") is not None:
                    pipe.zadd(self._key("files-expiring"), {record["id"]: record["expires_at"]})
                await pipe.execute()

        await self.store.call(index)

    async def _seq(self) -> int:
        """A number larger than every earlier one: the order of listings."""
        return int(await self.redis.incr(self._key("batch-seq")))

    async def get_file(self, file: str) -> dict[str, Any] | None:
        raw = await self.store.call(self.redis.hgetall, self._key("file", file))
        return _decode(raw, FILE_FIELDS) if raw else None

    async def list_files(
        self, owner: str, purpose: str, after: str, limit: int, ascending: bool
    ) -> tuple[list[dict[str, Any]], bool]:
        """``owner``'s files (of ``purpose``, when given) after ``after``, at most ``limit``; whether more follow."""
        ids = await self._ids(self._key("files", owner), after, ascending)
        return await self._page("file", ids, FILE_FIELDS, limit, lambda r: not purpose or r["purpose"] == purpose)

    async def _page(
        self,
        kind: str,
        ids: list[str],
        fields: tuple[str, ...],
        limit: int,
        keep: Callable[[dict[str, Any]], bool],
    ) -> tuple[list[dict[str, Any]], bool]:
        """The first ``limit`` records of ``ids`` that ``keep`` keeps (read 200 at a time, no more than needed);
        whether more follow."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(ids), 200):
            records = await self._records(kind, ids[start : start + 200], fields)
            found += [r for r in records if keep(r)]
            if len(found) > limit:
                break
        return found[:limit], len(found) > limit

    async def _ids(self, index: str, after: str, ascending: bool) -> list[str]:
        """The ids of the sorted set ``index`` in order, those after ``after`` (when it is there)."""
        ids = [i.decode() for i in await self.store.call(self.redis.zrange, index, 0, -1, desc=not ascending)]
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        return ids

    async def _records(self, kind: str, ids: list[str], fields: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
        async def read() -> list[dict[bytes, bytes]]:
            async with self.redis.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hgetall(self._key(kind, i))
                return await pipe.execute()

        return [_decode(raw, fields) for raw in await self.store.call(read) if raw]

    async def delete_file(self, file: str) -> bool:
        record = await self.get_file(file)
        if record is None:
            return False

        async def delete() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("file", file), self._key("filedata", file))
                pipe.zrem(self._key("files", record["owner"]), file)
                pipe.zrem(self._key("files-expiring"), file)
                await pipe.execute()

        await self.store.call(delete)
        return True

    async def expire_files(self, now: int) -> list[str]:
        """Delete the files whose ``expires_at`` passed at ``now``; their ids."""
        key = self._key("files-expiring")
        gone = [i.decode() for i in await self.store.call(self.redis.zrangebyscore, key, "-inf", now, 0, 1000)]
        for file in gone:
            if not await self.delete_file(file):
                await self.store.call(self.redis.zrem, key, file)  # its record was gone already
        return gone

    async def content(self, file: str) -> AsyncIterator[bytes]:
        """The content of ``file``, piece by piece (one round trip each)."""
        key, index = self._key("filedata", file), 0
        while pieces := await self.store.call(self.redis.lrange, key, index, index):
            yield pieces[0]
            index += 1

    async def read_file(self, file: str, limit: int) -> bytes:
        data = bytearray()
        async for piece in self.content(file):
            data += piece
            if len(data) >= limit:
                break
        return bytes(data[:limit])

    # ----------------------------------------------------------------------------------------------- batches

    async def create_batch(self, new: NewBatch) -> dict[str, Any]:
        """A batch as ``new`` describes it (see :meth:`BatchStore.create_batch`): its lines written first, then
        the batch in one transaction — a gateway that dies between leaves lines nobody reads, never half a
        batch."""
        made, now, parsed = batch_id(new.endpoint), int(time.time()), new.parsed
        lines = parsed.lines
        for start in range(0, len(lines), _LINES_AT_ONCE):
            part = lines[start : start + _LINES_AT_ONCE]
            await self._write_lines(made, part)
        failed = bool(parsed.errors)
        record: dict[str, Any] = {
            "id": made,
            "owner": new.owner,
            "created_at": now,
            "status": "failed" if failed else "in_progress",
            "endpoint": new.endpoint,
            "input_file_id": new.input_file_id,
            "completion_window": new.window,
            "model": parsed.model or None,
            "metadata": json.dumps(new.metadata) if new.metadata is not None else None,
            "errors": json.dumps({"object": "list", "data": [e.as_dict() for e in parsed.errors]}) if failed else None,
            "total": len(lines),
            "completed": 0,
            "failed": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "expires_at": now + new.window_seconds,
            ("failed_at" if failed else "in_progress_at"): now,
            "output_expires_after": new.output_seconds,
        }

        async def write() -> None:
            seq = await self._seq()
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("batch", made), mapping={k: str(v) for k, v in record.items() if v is not None})
                pipe.zadd(self._key("batches", new.owner), {made: seq})
                pipe.zadd(self._key("batches", "*"), {made: seq})
                if not failed:
                    pipe.sadd(self._key("batches-active"), made)
                await pipe.execute()

        await self.store.call(write)
        done = await self.get_batch(made)
        assert done is not None
        return done

    async def _write_lines(self, batch: str, lines: list[BatchLine]) -> None:
        async def write() -> None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hset(
                    self._key("lines", batch),
                    mapping={
                        str(line.index): msgspec.msgpack.encode(_Line(line.custom_id, line.body)) for line in lines
                    },
                )
                pipe.zadd(self._key("pending", batch), {str(line.index): line.index for line in lines})
                await pipe.execute()

        await self.store.call(write)

    async def get_batch(self, batch: str) -> dict[str, Any] | None:
        raw = await self.store.call(self.redis.hgetall, self._key("batch", batch))
        return _decode(raw, _BATCH_FIELDS) if raw else None

    async def list_batches(
        self, owner: str | None, after: str, limit: int, *, messages: bool | None = None, ascending: bool = False
    ) -> tuple[list[dict[str, Any]], bool]:
        """``owner``'s batches (everyone's for ``None``), newest first (oldest first: ``ascending``), after
        ``after``; whether more follow (``messages``: see :meth:`BatchStore.list_batches`)."""
        ids = await self._ids(self._key("batches", owner if owner is not None else "*"), after, ascending)
        if messages is None:
            return await self._records("batch", ids[:limit], _BATCH_FIELDS), len(ids) > limit
        return await self._page("batch", ids, _BATCH_FIELDS, limit, lambda r: (r["endpoint"] == MESSAGES) == messages)

    async def delete_batch(self, batch: str) -> bool:
        """Delete ``batch`` — its record, lines, answers and result files; whether it was there (an ended batch:
        the caller checks)."""
        record = await self.get_batch(batch)
        if record is None:
            return False
        files = [result_file_id(batch, kind) for kind in ("output", "errors")]

        async def delete() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(
                    *(self._key(kind, batch) for kind in ("batch", "lines", "pending", "results")),
                    *(self._key(kind, file) for file in files for kind in ("file", "filedata")),
                )
                pipe.zrem(self._key("batches", record["owner"]), batch)
                pipe.zrem(self._key("batches", "*"), batch)
                pipe.zrem(self._key("files", record["owner"]), *files)
                pipe.zrem(self._key("files-expiring"), *files)
                pipe.srem(self._key("batches-active"), batch)
                await pipe.execute()

        await self.store.call(delete)
        return True

    async def active(self) -> list[dict[str, Any]]:
        ids = sorted(i.decode() for i in await self.store.call(self.redis.smembers, self._key("batches-active")))
        records = await self._records("batch", ids, _BATCH_FIELDS)
        return sorted((r for r in records if r["status"] in ACTIVE), key=lambda r: (r["created_at"], r["id"]))

    async def pending(self, batch: str, after: int, limit: int) -> list[BatchLine]:
        async def read() -> list[BatchLine]:
            indexes = await self.redis.zrangebyscore(self._key("pending", batch), f"({after}", "+inf", 0, limit)
            if not indexes:
                return []
            raws = await self.redis.hmget(self._key("lines", batch), indexes)
            out = []
            for index, raw in zip(indexes, raws, strict=True):
                if raw is not None:
                    line = msgspec.msgpack.decode(raw, type=_Line)
                    out.append(BatchLine(int(index), line.custom_id, line.body))
            return out

        return await self.store.call(read)

    async def record(
        self, batch: str, index: int, *, status: int, request_id: str, result: bytes, tokens: tuple[int, int]
    ) -> bool:
        keys = [self._key("results", batch), self._key("pending", batch), self._key("batch", batch)]
        answer = msgspec.msgpack.encode(_Answer(status, request_id, result))
        column = "completed" if 200 <= status < 300 else "failed"
        stored = await self.store.call(self._record, keys=keys, args=[str(index), answer, column, *tokens])
        return bool(stored)

    async def move(self, batch: str, to: str, when: tuple[str, ...]) -> dict[str, Any] | None:
        args = [to, int(time.time()), *when]
        if not await self.store.call(self._move, keys=[self._key("batch", batch)], args=args):
            return None
        return await self.get_batch(batch)

    async def finish(self, batch: str, final: str) -> dict[str, Any]:
        """Write ``batch``'s output and error files and set it ``final`` (see :meth:`BatchStore.finish`)."""
        assert final in ("completed", "expired", "cancelled")
        record = await self.get_batch(batch)
        assert record is not None

        writers = {kind: _ResultWriter(self, record, kind) for kind in ("output", "errors")}
        for first in range(0, record["total"], _LINES_AT_ONCE):  # a slice of lines at a time: never all of them
            indexes = [str(i) for i in range(first, min(first + _LINES_AT_ONCE, record["total"]))]

            async def read(indexes: list[str] = indexes) -> list[list[bytes | None]]:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.hmget(self._key("lines", batch), indexes)
                    pipe.hmget(self._key("results", batch), indexes)
                    return await pipe.execute()

            lines, results = await self.store.call(read)
            for raw_line, raw in zip(lines, results, strict=True):
                if raw_line is None:
                    continue
                line = msgspec.msgpack.decode(raw_line, type=_Line)
                answer = None
                if raw is not None:
                    stored = msgspec.msgpack.decode(raw, type=_Answer)
                    answer = (stored.status, stored.request_id, stored.body)
                kind, data = finished_line(record["endpoint"], line.custom_id, answer, final)
                if kind:
                    await writers[kind].write(data)
        ids = {kind: await writer.close(keep_empty=kind == "output") for kind, writer in writers.items()}
        now = int(time.time())

        async def close() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                mapping = {"status": final, f"{final}_at": str(now), "output_file_id": str(ids["output"])}
                if ids["errors"]:
                    mapping["error_file_id"] = ids["errors"]
                pipe.hset(self._key("batch", batch), mapping=mapping)
                pipe.srem(self._key("batches-active"), batch)
                pipe.delete(self._key("pending", batch))
                await pipe.execute()

        await self.store.call(close)
        done = await self.get_batch(batch)
        assert done is not None
        return done


class _ResultWriter:
    """A batch's output or error file written into the store as it is made: in pieces of :data:`PIECE` bytes to a
    key of its own, which replaces the file's data at :meth:`close` (a finish run again replaces the file)."""

    def __init__(self, store: SharedBatchStore, batch: dict[str, Any], kind: str) -> None:
        self.shared, self.batch, self.kind = store, batch, kind
        self.file = result_file_id(batch["id"], kind)
        self.part_key = store._key("filedata-part", self.file)
        self.buffer, self.size, self.started = bytearray(), 0, False

    async def write(self, data: bytes) -> None:
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= PIECE:
            await self._push(bytes(self.buffer[:PIECE]))
            del self.buffer[:PIECE]

    async def _push(self, piece: bytes) -> None:
        store, redis = self.shared.store, self.shared.redis
        if not self.started:  # what a finish that stopped half-way left
            await store.call(redis.delete, self.part_key)
            self.started = True
        await store.call(redis.rpush, self.part_key, piece)

    async def close(self, *, keep_empty: bool) -> str | None:
        """Put the file in place and index it: its id (``None``: it is empty and not ``keep_empty``)."""
        if self.buffer:
            await self._push(bytes(self.buffer))
            self.buffer.clear()
        if not self.size and not keep_empty:
            return None
        store, redis = self.shared.store, self.shared.redis
        data_key = self.shared._key("filedata", self.file)
        if self.size:
            await store.call(redis.rename, self.part_key, data_key)
        else:
            await store.call(redis.delete, data_key)
        now, kept, batch = int(time.time()), self.batch["output_expires_after"], self.batch["id"]
        record = {
            "id": self.file,
            "owner": self.batch["owner"],
            "purpose": "batch_output",
            "filename": f"{batch}_{'output' if self.kind == 'output' else 'error'}.jsonl",
            "bytes": self.size,
            "created_at": now,
            "expires_at": now + kept if kept else None,
        }
        await self.shared._index_file(record)
        return self.file


async def _in_thread(call: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(call, *args)
