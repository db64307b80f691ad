"""How much memory a model's KV cache takes, from what its files say about its shape. Pure.

The shape — layers, key/value heads, the key and value widths, the context it was trained for — comes from a
GGUF file's metadata (the first megabytes of the file: the header comes before the tensors) or from a
safetensors model's ``config.json``. The KV cache of a context of ``n`` tokens then takes
``layers * kv_heads * (key width + value width) * n * bytes per element`` — 2 bytes, the f16/bf16 cache every
engine uses by default. Models that use a sliding window on some layers need less; this errs on the safe side.

Then the memory a model needs (:func:`needed_mb`): the weights, the engine's buffers and that KV cache. Parsing
and arithmetic are pure; :func:`local_shape` reads the first bytes of a local file (in a thread).
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helexa.modelfiles.preflight import SourceInfo

__all__ = [
    "BUFFER_OVERHEAD",
    "MEMORY_OVERHEAD",
    "NeedMore",
    "Shape",
    "gguf_shape_from_reader",
    "kv_cache_bytes",
    "local_shape",
    "needed_mb",
    "read_head",
    "shape_from_config",
    "shape_from_gguf",
]

KV_ELEMENT_BYTES = 2
MEMORY_OVERHEAD = 1.2  # weights -> weights + KV cache and buffers, when the model's shape is unknown
BUFFER_OVERHEAD = 1.1  # weights -> weights + compute buffers, when the KV cache is counted from the shape
_PREFIXES = (1 << 20, 8 << 20, 32 << 20)  # bytes of a GGUF read in turn until its metadata is in


@dataclass(frozen=True, slots=True)
class Shape:
    """The dimensions of a transformer that fix its KV cache size."""

    layers: int
    kv_heads: int
    key_width: int
    value_width: int
    trained_context: int


def kv_cache_bytes(shape: Shape, context: int) -> int:
    """Bytes of KV cache for ``context`` tokens (the trained context when ``context`` is 0)."""
    tokens = context or shape.trained_context
    return shape.layers * shape.kv_heads * (shape.key_width + shape.value_width) * tokens * KV_ELEMENT_BYTES


def _int(value: Any) -> int:
    if isinstance(value, list):  # per-layer values (some GGUFs give head_count_kv per layer): the largest
        value = max((v for v in value if isinstance(v, int)), default=0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def shape_from_config(config: dict[str, Any]) -> Shape | None:
    """The shape in a Hugging Face ``config.json`` (a multimodal model's ``text_config`` when it has one);
    ``None`` when it lacks the fields."""
    if isinstance(config.get("text_config"), dict):
        config = {**config, **config["text_config"]}
    layers = _int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers"))
    heads = _int(config.get("num_attention_heads") or config.get("n_head"))
    hidden = _int(config.get("hidden_size") or config.get("n_embd"))
    kv_heads = _int(config.get("num_key_value_heads")) or heads
    head_dim = _int(config.get("head_dim")) or (hidden // heads if heads else 0)
    context = _int(config.get("max_position_embeddings") or config.get("n_positions"))
    if not (layers and kv_heads and head_dim):
        return None
    return Shape(layers, kv_heads, head_dim, head_dim, context)


class NeedMore(Exception):
    """The metadata goes on past the bytes given: read a longer prefix of the file and try again."""


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise NeedMore
        chunk = self.data[self.at : self.at + n]
        self.at += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, kind: int, keep: bool) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, count = self.unpack("<I"), self.unpack("<Q")
            if item in _SCALARS and not keep:  # skipped without decoding (token scores, types)
                self.take(struct.calcsize(_SCALARS[item]) * count)
                return None
            values = [self.value(item, keep) for _ in range(count)]
            return values if keep else None
        raise ValueError(f"unknown GGUF value type {kind}")


def shape_from_gguf(prefix: bytes) -> Shape | None:
    """The shape in a GGUF file's metadata, read from the first bytes of the file.

    :raises NeedMore: the architecture's keys were not all within ``prefix``.
    :raises ValueError: ``prefix`` is not a GGUF file.
    """
    cur = _Cursor(prefix)
    if cur.take(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = cur.unpack("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old to read")
    cur.unpack("<Q")  # tensor count
    count = cur.unpack("<Q")
    meta: dict[str, Any] = {}
    arch = ""
    for _ in range(count):
        key = cur.string()
        if key.startswith("tokenizer.") and "block_count" in meta:
            break  # converters write the architecture's keys first: the large vocabulary arrays need not be read
        kind = cur.unpack("<I")
        keep = key == "general.architecture" or (bool(arch) and key.startswith(arch + "."))
        value = cur.value(kind, keep)
        if key == "general.architecture":
            arch = str(value)
        elif keep:
            meta[key[len(arch) + 1 :]] = value
    return _gguf_shape(meta)


def _gguf_shape(meta: dict[str, Any]) -> Shape | None:
    layers = _int(meta.get("block_count"))
    heads = _int(meta.get("attention.head_count"))
    kv_heads = _int(meta.get("attention.head_count_kv")) or heads
    width = _int(meta.get("embedding_length"))
    key = _int(meta.get("attention.key_length")) or (width // heads if heads else 0)
    value = _int(meta.get("attention.value_length")) or key
    if not (layers and kv_heads and key):
        return None
    return Shape(layers, kv_heads, key, value, _int(meta.get("context_length")))


async def gguf_shape_from_reader(read: Callable[[int], Awaitable[bytes]]) -> Shape | None:
    """:func:`shape_from_gguf` over ``await read(n)`` (the first ``n`` bytes of the file, a local file or a
    ranged download), asking for 1, 8, then 32 MiB; ``None`` when the metadata is not in 32 MiB or the file
    is not a GGUF."""
    for size in _PREFIXES:
        data = await read(size)
        try:
            return shape_from_gguf(data)
        except NeedMore:
            if len(data) < size:  # that was the whole file
                return None
        except ValueError:
            return None
    return None


def needed_mb(weight_bytes: int, vram_mb: int = 0, kv_bytes: int | None = None) -> int:
    """Memory (MiB) a model needs: the catalogue's ``vram_mb``; else its weights with :data:`BUFFER_OVERHEAD`
    plus ``kv_bytes`` of KV cache (:mod:`helexa.modelfiles.shape`); else, the shape unknown, its weights with
    :data:`MEMORY_OVERHEAD`."""
    if vram_mb:
        return vram_mb
    if kv_bytes is None:
        return int(weight_bytes / (1024 * 1024) * MEMORY_OVERHEAD)
    return int((weight_bytes * BUFFER_OVERHEAD + kv_bytes) / (1024 * 1024))


async def local_shape(source: SourceInfo, files: Sequence[PurePath]) -> Shape | None:
    """The shape of a local model: the metadata of its (first) GGUF file, or its ``config.json``; ``None``
    when neither can be read."""
    try:
        if source.kind == "gguf":
            first = Path(sorted(str(f) for f in files)[0])
            return await gguf_shape_from_reader(lambda n: asyncio.to_thread(read_head, first, n))
        config = Path(source.path) / "config.json"
        text = await asyncio.to_thread(config.read_text) if config.is_file() else ""
        return shape_from_config(json.loads(text)) if text else None
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def read_head(path: Path, size: int) -> bytes:
    """The first ``size`` bytes of the file at ``path``."""
    with path.open("rb") as fh:
        return fh.read(size)
