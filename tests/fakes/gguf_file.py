"""GGUF headers for tests: a valid metadata block (version 3) followed by filler instead of tensors."""

from __future__ import annotations

import struct
from typing import Any


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def _value(value: Any) -> tuple[int, bytes]:
    if isinstance(value, bool):
        return 7, struct.pack("<?", value)
    if isinstance(value, int):
        return 4, struct.pack("<I", value)
    if isinstance(value, float):
        return 6, struct.pack("<f", value)
    if isinstance(value, str):
        return 8, _string(value)
    if isinstance(value, list):
        kind = _value(value[0])[0] if value else 4
        return 9, struct.pack("<IQ", kind, len(value)) + b"".join(_value(v)[1] for v in value)
    raise TypeError(value)


def gguf_bytes(metadata: dict[str, Any], filler: int = 0) -> bytes:
    """A GGUF file: ``metadata`` in order, no tensors, then ``filler`` bytes of zeros (the weights' stand-in)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata))
    for key, value in metadata.items():
        kind, data = _value(value)
        out += _string(key) + struct.pack("<I", kind) + data
    return out + b"\0" * filler


def llama_metadata(*, layers: int, heads: int, kv_heads: int, width: int, context: int, vocab: int = 10) -> dict:
    """The keys llama.cpp's converter writes for a llama-like model, tokenizer last."""
    return {
        "general.architecture": "llama",
        "general.name": "test",
        "llama.block_count": layers,
        "llama.context_length": context,
        "llama.embedding_length": width,
        "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(vocab)],
        "tokenizer.ggml.scores": [0.0] * vocab,
    }
