"""What ``GET /version`` reports: the package version, the git commit when known, Python and plugins."""

from __future__ import annotations

import platform
from pathlib import Path

from helexa.__about__ import __version__
from helexa.engine.plugins import HelexaPluginManager
from helexa.wire import WireStruct

__all__ = ["PluginVersion", "VersionInfo", "git_sha", "version_info"]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


class PluginVersion(WireStruct):
    """One entry-point plugin and the distribution that ships it."""

    name: str
    distribution: str = ""
    version: str = ""
    error: str = ""


class VersionInfo(WireStruct):
    """The body of ``GET /version``."""

    version: str
    git_sha: str = ""
    python: str = ""
    role: str = ""
    plugins: list[PluginVersion] = []


def git_sha(package_dir: Path = _PACKAGE_DIR) -> str:
    """The commit this code was built from: ``helexa/BUILD_SHA`` (written by packaging) or, in a git
    checkout, read from ``.git`` without running git. Empty when unknown."""
    stamped = package_dir / "BUILD_SHA"
    if stamped.is_file():
        return stamped.read_text().strip()
    git = package_dir.parent / ".git"
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        ref_file = git / ref
        if ref_file.is_file():
            return ref_file.read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    except OSError:
        pass
    return ""


def version_info(role: str, pm: HelexaPluginManager | None = None) -> VersionInfo:
    """Build the version report once, at start-up (it reads files)."""
    plugins = [
        PluginVersion(name=p.name, distribution=p.distribution, version=p.version, error=p.error)
        for p in (pm.entry_point_plugins if pm is not None else [])
    ]
    return VersionInfo(
        version=__version__,
        git_sha=git_sha(),
        python=platform.python_version(),
        role=role,
        plugins=plugins,
    )
