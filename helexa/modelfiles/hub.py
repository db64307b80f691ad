"""Hugging Face sources through ``huggingface_hub``: a repository's listing, its cache, and resumable downloads.

Everything here blocks (network, disk); the neuron runs it in threads. ``huggingface_hub`` does the talking —
it honours ``HF_ENDPOINT`` (mirrors, air-gapped hubs), ``HF_TOKEN`` (gated and private repos) and
``HF_HUB_OFFLINE`` — and files land in its cache layout (``models--org--name/blobs`` + ``snapshots/<commit>``),
the one vLLM and transformers read, so a file pulled once serves every engine and a file already there is
never fetched again.

Names that come from the hub — a listing's file names (``rfilename``), its commit (``sha``), a download's
``ETag`` — and the revision a source names become paths in the cache, so each is checked before it is used
(:mod:`helexa.modelfiles.hubnames`): a hub, a mirror or anyone in the middle of
a plain-http mirror can write nothing outside the repository's cache folder. A listing with one bad name is
refused whole (``unsafe_listing``) before anything is written; the token goes only to the hub's own host,
never to a host the hub redirects a download to.

One thing is helexa's own: a partial download is kept (``blobs/<etag>.incomplete``) when it is interrupted or
cancelled and resumed from where it stopped by the next pull (``huggingface_hub`` 1.x drops partial files),
and every LFS file is checked against the SHA-256 the listing gives before it enters the cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helexa.errors import PreflightError, UpstreamError
from helexa.modelfiles.hubnames import (
    check_file_name,
    checked_commit,
    checked_etag,
    inside,
    is_hex_id,
    is_revision,
    lfs_sha256,
)

__all__ = [
    "Cancelled",
    "HfSource",
    "HubFile",
    "Listing",
    "Progress",
    "cache_dir",
    "fetch_files",
    "list_repo",
    "missing",
    "parse_hf_source",
    "ranged_request",
    "snapshot_dir",
]

_REPO = r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}"
_HF = re.compile(rf"^(?:hf:)?(?P<repo>{_REPO})(?:@(?P<rev>[A-Za-z0-9._/-]{{1,128}}))?$")
CHUNK_BYTES = 1 << 20
_TOKEN_HINT = "set HF_TOKEN in the neuron's environment (a token whose account accepted the model's terms)"


@dataclass(frozen=True, slots=True)
class HfSource:
    """A Hugging Face model repository at a revision (a branch, tag or commit)."""

    repo: str
    revision: str = "main"

    def __str__(self) -> str:
        return f"hf:{self.repo}" + (f"@{self.revision}" if self.revision != "main" else "")


def parse_hf_source(source: str, *, bare: bool = True) -> HfSource | None:
    """``hf:org/name[@revision]`` (or, with ``bare``, ``org/name[@revision]``) as an :class:`HfSource`, else None
    (also when the revision is no branch, tag, commit or ``refs/pr/N``: see :func:`is_revision`)."""
    if not bare and not source.startswith("hf:"):
        return None
    match = _HF.match(source)
    if match is None or ".." in match.group("repo"):
        return None
    revision = match.group("rev") or "main"
    return HfSource(match.group("repo"), revision) if is_revision(revision) else None


@dataclass(frozen=True, slots=True)
class HubFile:
    """One file of a repository: its path in the repo, size, and SHA-256 when it is an LFS file."""

    name: str
    size: int
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class Listing:
    """What a repository holds at a commit. ``offline``: read from the local cache, not the hub."""

    source: HfSource
    commit: str
    files: tuple[HubFile, ...]
    offline: bool = False

    def file(self, name: str) -> HubFile:
        """The entry called ``name``. :raises KeyError: none."""
        return next(f for f in self.files if f.name == name)


def cache_dir(configured: str = "") -> Path:
    """The hub cache: ``configured``, else ``huggingface_hub``'s own (``HF_HUB_CACHE`` / ``HF_HOME``)."""
    if configured:
        return Path(configured).expanduser()
    from huggingface_hub import constants  # noqa: PLC0415  (import on use: the gateway never needs it)

    return Path(constants.HF_HUB_CACHE)


def _storage(cache: Path, repo: str) -> Path:
    return cache / ("models--" + repo.replace("/", "--"))


def snapshot_dir(cache: Path, source: HfSource, commit: str) -> Path:
    """Where the files of ``source`` at ``commit`` are (symlinks into ``blobs``)."""
    return _storage(cache, source.repo) / "snapshots" / commit


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


def list_repo(model_id: str, source: HfSource, cache: Path) -> Listing:
    """The files of ``source`` with their sizes and checksums, in one round trip to the hub; from the cache
    when the hub is unreachable or ``HF_HUB_OFFLINE`` is set.

    :raises PreflightError: ``auth_required`` (gated or private, no token), ``source_missing`` (no such repo
        or revision), ``hub_unreachable`` (nothing cached either).
    """
    from huggingface_hub import HfApi, constants  # noqa: PLC0415
    from huggingface_hub.errors import (  # noqa: PLC0415
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if constants.HF_HUB_OFFLINE:
        return _cached_listing(model_id, source, cache, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(source.repo, revision=source.revision, files_metadata=True, token=_token())
    except GatedRepoError:
        raise PreflightError(
            "auth_required",
            model_id,
            f"{source.repo} is gated: the hub wants a token with access to it",
            _TOKEN_HINT,
        ) from None
    except RevisionNotFoundError:
        raise PreflightError(
            "source_missing", model_id, f"{source.repo} has no revision {source.revision!r}", "check the @revision"
        ) from None
    except RepositoryNotFoundError:
        hint = "check the repo id" + ("" if _token() else f", or if it is private: {_TOKEN_HINT}")
        raise PreflightError("source_missing", model_id, f"no repository {source.repo!r} on the hub", hint) from None
    except Exception as exc:  # HfHubHTTPError (5xx), httpx transport errors, timeouts: the hub is unreachable
        return _cached_listing(model_id, source, cache, f"the hub did not answer ({_short(exc)})")
    files = tuple(
        HubFile(check_file_name(model_id, s.rfilename), int(s.size or 0), lfs_sha256(model_id, s))
        for s in info.siblings or ()
    )
    commit = info.sha or (source.revision if is_hex_id(source.revision) else "")
    return Listing(source, checked_commit(model_id, commit), files)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _cached_listing(model_id: str, source: HfSource, cache: Path, why: str) -> Listing:
    """The files of ``source`` already in the cache, or ``hub_unreachable``."""
    storage = _storage(cache, source.repo)
    commit = source.revision
    ref = storage / "refs" / source.revision
    if ref.is_file():
        commit = ref.read_text().strip()
    snapshot = storage / "snapshots" / commit
    if not is_hex_id(commit) or not snapshot.is_dir():
        raise PreflightError(
            "hub_unreachable",
            model_id,
            f"{why}, and {source} is not in the cache at {cache}",
            "check HF_ENDPOINT and the network, or pull the model on a host that reaches the hub first",
        )
    files = tuple(
        HubFile(str(p.relative_to(snapshot)), p.stat().st_size) for p in sorted(snapshot.rglob("*")) if p.is_file()
    )
    return Listing(source, commit, files, offline=True)


def missing(listing: Listing, names: list[str], cache: Path) -> list[HubFile]:
    """The files of ``names`` not yet in the cache at the listing's commit."""
    snapshot = snapshot_dir(cache, listing.source, listing.commit)
    return [listing.file(n) for n in names if not (snapshot / n).is_file()]


class Cancelled(Exception):
    """The download was cancelled; its partial file is kept for the next pull."""


@dataclass
class Progress:
    """Bytes of a pull so far, shared with the threads that download (plain ints: one writer)."""

    total: int = 0
    done: int = 0
    started: float = field(default_factory=time.monotonic)
    resumed: int = 0  # bytes that were already there from an earlier, interrupted pull
    current: str = ""
    cancel: threading.Event = field(default_factory=threading.Event)

    def rate(self) -> float:
        """Bytes per second fetched by this pull (resumed bytes not counted)."""
        elapsed = time.monotonic() - self.started
        return (self.done - self.resumed) / elapsed if elapsed > 0 else 0.0


class _Meter:
    """What ``huggingface_hub`` takes for a progress bar: counts bytes and stops the download when cancelled."""

    def __init__(self, progress: Progress, **_: Any) -> None:
        self.progress = progress

    def __enter__(self) -> _Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        if self.progress.cancel.is_set():
            raise Cancelled()
        self.progress.done += int(n or 0)

    def close(self) -> None:
        return None


def fetch_files(listing: Listing, names: list[str], cache: Path, progress: Progress) -> Path:
    """Download the files ``names`` of ``listing`` into the cache (resuming partial ones), verify them, and
    return the snapshot directory that holds them.

    :raises Cancelled: ``progress.cancel`` was set (partial file kept).
    :raises PreflightError: ``auth_required``, ``source_missing``, ``checksum_mismatch`` or ``unsafe_listing``.
    :raises UpstreamError: the download failed (network, disk): a 502 ``download_failed``.
    """
    todo = missing(listing, names, cache)
    progress.total = sum(f.size for f in todo)
    for f in todo:
        progress.current = f.name
        try:
            _fetch_one(listing, f, cache, progress)
        except (Cancelled, PreflightError):
            raise
        except Exception as exc:  # httpx / huggingface_hub errors, a broken connection, a full disk
            raise UpstreamError(
                f"downloading {f.name} of {listing.source} failed: {_short(exc)}; the next pull resumes it",
                code="download_failed",
            ) from None
    progress.current = ""
    return snapshot_dir(cache, listing.source, listing.commit)


def _fetch_one(listing: Listing, f: HubFile, cache: Path, progress: Progress) -> None:
    from functools import partial  # noqa: PLC0415

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url  # noqa: PLC0415
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError  # noqa: PLC0415
    from huggingface_hub.file_download import http_get  # noqa: PLC0415
    from huggingface_hub.utils import build_hf_headers  # noqa: PLC0415

    # huggingface_hub reads 10 MiB per chunk; progress and cancellation act per chunk, so read less at a time
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, CHUNK_BYTES)
    repo, token = listing.source.repo, _token()
    try:
        meta = get_hf_file_metadata(hf_hub_url(repo, f.name, revision=listing.commit), token=token)
    except GatedRepoError:
        raise PreflightError("auth_required", repo, f"{repo} is gated", _TOKEN_HINT) from None
    except EntryNotFoundError:
        raise PreflightError("source_missing", repo, f"{f.name} is not in {repo}", "check the quant") from None
    etag = checked_etag(repo, f.name, f.sha256, meta.etag)
    storage = _storage(cache, repo)
    pointer = inside(repo, snapshot_dir(cache, listing.source, listing.commit), f.name)
    blob = storage / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.is_file():
        part = blob.with_name(blob.name + ".incomplete")
        with part.open("ab") as fh:
            already = fh.tell()
            progress.done += already
            progress.resumed += already
            size = meta.size if meta.size is not None else f.size
            hashing = _HashingFile(fh, _hash_of(part) if f.sha256 and already else None)
            if already < size:
                http_get(
                    meta.location,
                    hashing,  # type: ignore[arg-type]
                    resume_size=already,
                    headers=_headers_for(meta.location, build_hf_headers(token=token)),
                    expected_size=size,
                    tqdm_class=partial(_Meter, progress),  # type: ignore[arg-type]
                )
        digest = hashing.hexdigest() or (_hash_of(part).hexdigest() if f.sha256 else "")
        if f.sha256 and digest != f.sha256:
            part.unlink()
            raise PreflightError(
                "checksum_mismatch",
                repo,
                f"{f.name} does not match the hub's SHA-256 (removed; the next pull fetches it again)",
                "retry the pull; if it happens again, check the mirror at HF_ENDPOINT",
            )
        os.replace(part, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if not pointer.exists():
        pointer.unlink(missing_ok=True)  # a dangling link
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    if listing.source.revision != listing.commit and not listing.offline:
        ref = storage / "refs" / listing.source.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(listing.commit)


def _headers_for(url: str, headers: dict[str, str]) -> dict[str, str]:
    """``headers`` for a request to ``url``: without ``authorization`` unless ``url`` is on the hub's own host
    (a redirect to a CDN, or anywhere else, never receives the token) — as ``huggingface_hub`` does."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    from huggingface_hub import constants  # noqa: PLC0415

    if urlsplit(url).netloc.lower() == urlsplit(constants.ENDPOINT).netloc.lower():
        return headers
    return {k: v for k, v in headers.items() if k.lower() != "authorization"}


def ranged_request(listing: Listing, name: str, size: int) -> tuple[str, dict[str, str]]:
    """The URL and headers (the token's included) of a request for the first ``size`` bytes of ``name``."""
    from huggingface_hub import hf_hub_url  # noqa: PLC0415
    from huggingface_hub.utils import build_hf_headers  # noqa: PLC0415

    headers = {**build_hf_headers(token=_token()), "Range": f"bytes=0-{size - 1}"}
    return hf_hub_url(listing.source.repo, name, revision=listing.commit), headers


def _hash_of(path: Path) -> Any:
    """The SHA-256 hash object of the file's bytes (still open to more data)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest


class _HashingFile:
    """The download's file, hashing what is written as it is written, so the check after the download needs no
    second read of the file. A rewind (``huggingface_hub`` retrying a broken transfer) gives the hash up; the
    file is read again then. ``digest``: the hash of the bytes already in the file (a resumed download)."""

    def __init__(self, fh: Any, digest: Any = None) -> None:
        self.fh = fh
        self.digest = digest if digest is not None else hashlib.sha256()
        self.valid = fh.tell() == 0 or digest is not None

    def write(self, data: bytes) -> int:
        if self.valid:
            self.digest.update(data)
        return self.fh.write(data)

    def seek(self, *args: Any) -> int:
        self.valid = False
        return self.fh.seek(*args)

    def truncate(self, *args: Any) -> int:
        self.valid = False
        return self.fh.truncate(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)

    def hexdigest(self) -> str:
        """The file's SHA-256, or "" when it has to be read again."""
        return self.digest.hexdigest() if self.valid else ""
