"""Preflight refusals through POST /models/load: 422 with the structured reason, logged, nothing started."""

from __future__ import annotations

import logging


async def test_preflight_rejections_are_422_with_kind_and_suggestion(neuron, models_dir, caplog):
    (models_dir / "st").mkdir()
    (models_dir / "st" / "model.safetensors").write_bytes(b"x")
    (models_dir / "empty").mkdir()
    client = await neuron()
    cases = [
        ({"source": "missing.gguf"}, "source_missing"),
        ({"source": "empty"}, "source_empty"),
        ({"source": "st"}, "unsupported_format"),
        ({"source": "fake-Q4_K_M.gguf", "quant": "Q4_K_S"}, "quant_not_found"),
        ({"source": "fake-Q4_K_M.gguf", "tensor_parallel": 2}, "tensor_parallel"),
        ({"source": "/etc/passwd"}, "path_not_allowed"),
        ({"source": "fake-Q4_K_M.gguf", "harness": "nosuch"}, "harness_not_installed"),
        ({"source": "fake-Q4_K_M.gguf", "options": {"flags": 3}}, "invalid_options"),
        ({"source": "fake-Q4_K_M.gguf", "vram_mb": 10**9}, "insufficient_memory"),
    ]
    for extra, kind in cases:
        with caplog.at_level(logging.WARNING, logger="helexa.neuron.models"):
            resp = await client.post("/models/load", json={"model_id": "m1", "harness": "fake", **extra})
        assert resp.status == 422, (kind, await resp.text())
        error = (await resp.json())["error"]
        assert error["kind"] == kind
        assert error["model_id"] == "m1"
        assert error["message"] and "suggestion" in error
        if kind != "harness_not_installed":
            assert f"reason={kind}" in caplog.text
    error = await (
        await client.post(
            "/models/load", json={"model_id": "m1", "harness": "fake", "quant": "q4km_", "source": "fake-Q4_K_M.gguf"}
        )
    ).json()
    assert "error" not in error, error  # punctuation-insensitive match loads
    models = (await (await client.get("/models")).json())["models"]
    assert [m["status"] for m in models] == ["loaded"]
