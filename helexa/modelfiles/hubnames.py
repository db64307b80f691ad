"""Names a hub sends, checked before they become paths in the cache: a listing's file names, its commit id, a
file's SHA-256, a download's ETag, and the revision a source names. ``huggingface_hub`` refuses the same; a
mirror, or anyone in the middle of a plain-http one, must not be able to write outside a repository's folder.
Pure, but for :func:`inside` (which resolves the links above a path).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from helexa.errors import PreflightError

__all__ = [
    "MAX_NAME_CHARS",
    "check_file_name",
    "checked_commit",
    "checked_etag",
    "inside",
    "is_hex_id",
    "is_revision",
    "lfs_sha256",
]

_HEX_ID = re.compile(r"^[0-9a-f]{40,64}$")
_REF_PART = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
_PR_REF = re.compile(r"^refs/pr/[0-9]{1,9}$")
MAX_NAME_CHARS = 1024
_HOSTILE = "the hub or mirror at HF_ENDPOINT sent a hostile or broken listing: check it"


def is_hex_id(value: str) -> bool:
    """Whether ``value`` is a commit id or content hash as the hub writes them: 40 to 64 lower-case hex digits."""
    return _HEX_ID.match(value) is not None


def is_revision(value: str) -> bool:
    """Whether ``value`` can name a revision safely: a branch or tag by git's rules (slash-separated parts of
    letters, digits, ``._-``, none empty or starting with a dot or ending in ``.lock``, no ``..``), a commit id,
    or ``refs/pr/N``. It becomes the path ``refs/<revision>`` in the cache, so nothing else passes."""
    if _PR_REF.match(value) or is_hex_id(value):
        return True
    if not value or len(value) > 128 or ".." in value or value.startswith("refs/"):
        return False
    return all(_REF_PART.match(part) and not part.endswith(".lock") for part in value.split("/"))


def check_file_name(model_id: str, name: object) -> str:
    """``name`` (a file's path in a repository, from a listing) when it is safe to join to a snapshot folder:
    a relative path of ``/``-separated parts, none empty, ``.`` or ``..``, without backslashes or control
    characters, at most :data:`MAX_NAME_CHARS` long.

    :raises PreflightError: ``unsafe_listing`` naming the entry (shown with escapes, cut).
    """
    text = name if isinstance(name, str) else ""
    parts = text.split("/")
    bad = (
        not text
        or len(text) > MAX_NAME_CHARS
        or "\\" in text
        or any(ord(c) < 32 or ord(c) == 127 for c in text)
        or any(part in ("", ".", "..") for part in parts)
    )
    if bad:
        raise PreflightError(
            "unsafe_listing",
            model_id,
            f"the hub listed a file name that is not a plain relative path: {ascii(name)[:200]}; nothing was fetched",
            _HOSTILE,
        )
    return text


def checked_commit(model_id: str, commit: str) -> str:
    if not is_hex_id(commit):
        raise PreflightError(
            "unsafe_listing",
            model_id,
            f"the hub named the commit {ascii(commit)[:100]}, which is no commit id (40-64 hex digits); "
            "nothing was fetched",
            _HOSTILE,
        )
    return commit


def lfs_sha256(model_id: str, sibling: Any) -> str:
    """The SHA-256 a listing gives for an LFS file ("" for a plain git file); 64 hex digits or refused."""
    digest = (sibling.lfs.sha256 if sibling.lfs is not None else "") or ""
    if digest and not (len(digest) == 64 and is_hex_id(digest)):
        raise PreflightError(
            "unsafe_listing",
            model_id,
            f"the hub gave {ascii(sibling.rfilename)[:200]} the SHA-256 {ascii(digest)[:80]}, which is no SHA-256",
            _HOSTILE,
        )
    return digest


def checked_etag(model_id: str, name: str, sha256: str, etag: str | None) -> str:
    """The name of a file's blob: the hub's ETag (quotes and ``W/`` removed) when it is a content hash, else the
    listing's SHA-256, else a hash of the name; an ETag that is anything but 40-64 hex digits is refused."""
    value = (etag or "").strip()
    value = value.removeprefix("W/").strip('"')
    if value:
        if not is_hex_id(value):
            raise PreflightError(
                "unsafe_listing",
                model_id,
                f"the hub sent {ascii(name)[:200]} with the ETag {ascii(value)[:80]}, which is no content hash "
                "(40-64 hex digits); nothing was written",
                "the hub or mirror at HF_ENDPOINT sent a hostile or broken answer: check it",
            )
        return value
    return sha256 or hashlib.sha256(name.encode()).hexdigest()


def inside(model_id: str, snapshot: Path, name: str) -> Path:
    """``snapshot / name`` when it stays inside ``snapshot`` once links in the folders above it are followed.

    :raises PreflightError: ``unsafe_listing``."""
    path = snapshot / check_file_name(model_id, name)
    base = snapshot.resolve()
    if not path.parent.resolve().is_relative_to(base):
        raise PreflightError(
            "unsafe_listing",
            model_id,
            f"{ascii(name)[:200]} would be written outside the snapshot folder {snapshot}; nothing was written",
            "remove the links in the cache folder, or check the hub at HF_ENDPOINT",
        )
    return path
