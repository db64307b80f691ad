"""The downloads of one neuron: a job per set of files, shared by every load and pull that needs them.

Concurrent loads and pulls of the same files wait for one download; when the last one waiting gives up (an
unload), the download stops and its partial file stays for the next attempt. Progress is logged every few
seconds and reported in ``/models`` and ``GET /pulls``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from helexa.errors import PreflightError
from helexa.modelfiles.hub import Cancelled, HubFile, Listing, Progress, fetch_files, missing, snapshot_dir
from helexa.modelfiles.preflight import check_disk
from helexa.wire.neuron import DownloadInfo

__all__ = ["OnDownload", "Pull", "Pulls"]

logger = logging.getLogger(__name__)
LOG_EVERY_S = 5.0


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


class Pulls:
    """The downloads in progress into the Hugging Face ``cache`` (``downloads``: whether any may run)."""

    def __init__(self, cache: Path, *, downloads: bool) -> None:
        self.cache, self.downloads = cache, downloads
        self.jobs: dict[tuple[str, str, tuple[str, ...]], Pull] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.changed = asyncio.Event()  # set when a download ends: what is on disk changed

    def keep(self, awaitable: Awaitable[Path]) -> None:
        """Wait for a download in the background (a pull answered before it finished)."""

        async def wait() -> None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await awaitable

        task = asyncio.create_task(wait())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def pull(self, model_id: str, listing: Listing, files: list[str], on_download: OnDownload) -> Path:
        """The snapshot directory holding ``files`` of ``listing``, downloading what is missing — one download
        for everyone who needs the same files; ``on_download`` hears of it.

        :raises PreflightError: ``hub_unreachable``, ``download_disabled``, ``insufficient_disk``.
        :raises asyncio.CancelledError: the download was stopped (its last waiter left).
        """
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
        pull = self.jobs.get(key)
        if pull is not None and pull.progress.cancel.is_set():  # being stopped: let it let go of its files
            await asyncio.wait([pull.task])
            pull = None
        if pull is None:
            progress = Progress()
            task = asyncio.create_task(
                asyncio.to_thread(fetch_files, listing, files, self.cache, progress), name=f"pull {listing.source}"
            )
            pull = self.jobs[key] = Pull(str(listing.source), tuple(files), progress, task)
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
        pulls = list(self.jobs.values())
        for pull in pulls:
            pull.progress.cancel.set()
        if pulls:
            await asyncio.wait([p.task for p in pulls], timeout=10)

    def _done(self, key: tuple[str, str, tuple[str, ...]], pull: Pull) -> None:
        if self.jobs.get(key) is pull:
            del self.jobs[key]
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
