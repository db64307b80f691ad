"""The KV cache estimate: model shapes from GGUF metadata and config.json, as tables, and from real GGUFs."""

from __future__ import annotations

import pytest

from helexa.modelfiles.shape import (
    NeedMore,
    Shape,
    gguf_shape_from_reader,
    kv_cache_bytes,
    needed_mb,
    shape_from_config,
    shape_from_gguf,
)
from tests.fakes.gguf_file import gguf_bytes, llama_metadata

MiB = 1 << 20


def test_gguf_metadata_gives_the_shape_and_stops_before_the_vocabulary():
    meta = llama_metadata(layers=32, heads=32, kv_heads=8, width=4096, context=131072, vocab=200_000)
    data = gguf_bytes(meta)
    shape = shape_from_gguf(data)
    assert shape == Shape(layers=32, kv_heads=8, key_width=128, value_width=128, trained_context=131072)
    cut = data.index(b"tokenizer.ggml.tokens") + 40  # a prefix that ends inside the vocabulary array
    assert shape_from_gguf(data[:cut]) == shape
    with pytest.raises(NeedMore):
        shape_from_gguf(data[:60])
    with pytest.raises(ValueError):
        shape_from_gguf(b"PK\x03\x04" + b"\0" * 100)
    # Llama 3 8B at 8192 tokens: 32 x 8 x 256 x 8192 x 2 bytes = 1 GiB
    assert kv_cache_bytes(shape, 8192) == 1 << 30
    assert kv_cache_bytes(shape, 0) == 16 << 30  # 0: the trained context


def test_gguf_without_kv_heads_or_with_explicit_widths():
    def meta(**changes):
        keys = llama_metadata(layers=2, heads=4, kv_heads=4, width=64, context=128)
        tokenizer = {k: keys.pop(k) for k in list(keys) if k.startswith("tokenizer.")}
        keys.update({f"llama.attention.{k}": v for k, v in changes.items()})
        return {k: v for k, v in {**keys, **tokenizer}.items() if v is not None}

    assert shape_from_gguf(gguf_bytes(meta(head_count_kv=None))) == Shape(2, 4, 16, 16, 128)
    per_layer = meta(head_count_kv=[0, 2, 1], key_length=24)  # per layer: the largest counts
    assert shape_from_gguf(gguf_bytes(per_layer)) == Shape(2, 2, 24, 24, 128)
    assert shape_from_gguf(gguf_bytes({"general.architecture": "llama"})) is None


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (  # Qwen2.5-7B-Instruct
            {"num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "hidden_size": 3584,
             "max_position_embeddings": 32768},
            Shape(28, 4, 128, 128, 32768),
        ),
        (  # head_dim given (Qwen3, Gemma)
            {"num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096,
             "head_dim": 128, "max_position_embeddings": 40960},
            Shape(36, 8, 128, 128, 40960),
        ),
        (  # a multimodal model: the language model's numbers in text_config
            {"architectures": ["Gemma3ForConditionalGeneration"],
             "text_config": {"num_hidden_layers": 34, "num_attention_heads": 8, "num_key_value_heads": 4,
                             "hidden_size": 2560, "head_dim": 256, "max_position_embeddings": 131072}},
            Shape(34, 4, 256, 256, 131072),
        ),
        ({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}, Shape(2, 4, 16, 16, 0)),  # MHA
        ({"num_hidden_layers": 2}, None),
        ({"num_hidden_layers": "2", "num_attention_heads": True, "hidden_size": 64}, None),
    ],
)  # fmt: skip
def test_config_json_gives_the_shape(config, expected):
    assert shape_from_config(config) == expected


def test_memory_counts_weights_buffers_and_kv_cache():
    assert needed_mb(1000 * MiB) == 1200  # shape unknown: weights + 20 %
    assert needed_mb(1000 * MiB, kv_bytes=512 * MiB) == 1100 + 512
    assert needed_mb(1000 * MiB, vram_mb=3000, kv_bytes=512 * MiB) == 3000  # the catalogue knows best


async def test_reading_stops_at_32_mib_and_short_files_end_it():
    asked: list[int] = []

    async def endless(n: int) -> bytes:
        asked.append(n)
        return b"GGUF" + b"\3\0\0\0" + b"\0" * 8 + b"\xff" * (n - 16)  # a kv count no prefix satisfies

    assert await gguf_shape_from_reader(endless) is None and asked == [MiB, 8 * MiB, 32 * MiB]

    async def short(n: int) -> bytes:
        return b"GGUF\3\0\0\0"

    assert await gguf_shape_from_reader(short) is None
