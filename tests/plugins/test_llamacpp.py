"""The llama.cpp harness's command line and environment, built from plans and options (no engine)."""

from __future__ import annotations

import sys

import pytest

from helexa import HarnessContext, ModelSpec, PlacementPlan
from helexa.errors import ConfigError
from helexa_llamacpp import LlamaCpp, LlamaCppOptions
from helexa_llamacpp.server import parse_args

SPEC = ModelSpec(model_id="Qwen/Qwen3-8B-GGUF")


def arg(argv: list[str], flag: str) -> str:
    """The value after the last occurrence of ``flag`` (``python -m module`` comes first)."""
    return argv[len(argv) - 1 - argv[::-1].index(flag) + 1]


def build(plan: PlacementPlan, **options) -> tuple[list[str], dict[str, str]]:
    harness = LlamaCpp(HarnessContext())
    opts = LlamaCpp.parse_options(options)
    return harness.command(SPEC, plan, 20001, opts), harness.environment(SPEC, plan, opts)


def test_cpu_plan():
    argv, env = build(PlacementPlan(files=("/m/q.gguf",)))
    assert arg(argv, "-m") == "/m/q.gguf"
    assert arg(argv, "--host") == "127.0.0.1"
    assert arg(argv, "--port") == "20001"
    assert arg(argv, "--alias") == "Qwen/Qwen3-8B-GGUF"
    assert arg(argv, "-ngl") == "0"
    assert "--tensor-split" not in argv
    assert "--jinja" in argv
    assert env == {"CUDA_VISIBLE_DEVICES": ""}


def test_two_gpu_plan_splits_tensors_and_limits_visible_devices():
    argv, env = build(
        PlacementPlan(devices=(1, 3), tensor_parallel=2, files=("/m/q.gguf",)), ctx_size=32768, parallel=4
    )
    assert arg(argv, "-ngl") == "999"
    assert arg(argv, "--tensor-split") == "1,1"
    assert arg(argv, "-c") == "32768"
    assert arg(argv, "-np") == "4"
    assert env == {"CUDA_VISIBLE_DEVICES": "1,3"}


def test_binary_option_and_extra_args():
    argv, _ = build(
        PlacementPlan(devices=(0,), files=("/m/q.gguf",)),
        binary="/opt/llama/llama-server",
        threads=8,
        jinja=False,
        extra_args=["--flash-attn", "on"],
    )
    assert argv[0] == "/opt/llama/llama-server"
    assert arg(argv, "-t") == "8"
    assert "--jinja" not in argv
    assert argv[-2:] == ["--flash-attn", "on"]


def test_default_binary_is_path_or_the_bundled_server(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    argv = LlamaCpp(HarnessContext()).command(SPEC, PlacementPlan(files=("/m/q.gguf",)), 1, LlamaCppOptions())
    assert argv[:3] == [sys.executable, "-m", "helexa_llamacpp.server"]
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/llama-server")
    argv = LlamaCpp(HarnessContext()).command(SPEC, PlacementPlan(files=("/m/q.gguf",)), 1, LlamaCppOptions())
    assert argv[0] == "/usr/bin/llama-server"


def test_bundled_server_accepts_the_harness_argv():
    argv = LlamaCpp(HarnessContext()).command(
        SPEC, PlacementPlan(devices=(0, 1), files=("/m/q.gguf",)), 5, LlamaCppOptions(threads=2)
    )
    start = len(argv) - 1 - argv[::-1].index("-m")
    args = parse_args(argv[start:])
    assert (args.model, args.port, args.alias, args.gpu_layers, args.tensor_split, args.threads) == (
        "/m/q.gguf",
        5,
        SPEC.model_id,
        999,
        "1,1",
        2,
    )
    assert args.jinja and args.metrics


def test_unknown_option_is_rejected():
    with pytest.raises(ConfigError, match="unknown field `ctx`"):
        LlamaCpp.parse_options({"ctx": 1}, model_id="m")


@pytest.mark.parametrize(
    ("plan_context", "options", "c", "unified"),
    [
        (8192, {}, "8192", True),  # the context preflight chose, one cache for every slot
        (0, {}, "0", True),  # the shape unknown: llama.cpp's own (the trained context)
        (8192, {"kv_unified": False, "parallel": 3}, "24576", False),  # a context per slot
        (8192, {"ctx_size": 4096}, "4096", True),  # configured: as it is
    ],
)
def test_the_context_is_the_models_own_with_one_cache_for_all_slots(plan_context, options, c, unified):
    argv, _ = build(PlacementPlan(files=("/m/q.gguf",), context=plan_context), **options)
    assert arg(argv, "-c") == c
    assert ("--kv-unified" in argv) == unified
    start = len(argv) - 1 - argv[::-1].index("-m")
    args = parse_args(argv[start:])  # the bundled server takes them
    assert (args.ctx_size, args.kv_unified) == (int(c), unified)


@pytest.mark.parametrize(
    ("ram_mb", "options", "context"),
    [
        (16000, {}, 32768),  # the trained context fits
        (600, {}, 8192),  # it does not: the largest halving that does
        (16000, {"ctx_size": 2048}, 0),  # configured: preflight leaves it alone
    ],
)
async def test_preflight_picks_the_trained_context_or_what_of_it_fits(tmp_path, ram_mb, options, context):
    from helexa import Inventory
    from tests.fakes.gguf_file import gguf_bytes, llama_metadata

    # 16 layers x 8 KV heads x 128 wide: 64 KiB of KV cache a token, 2 GiB at 32k tokens
    meta = llama_metadata(layers=16, heads=32, kv_heads=8, width=4096, context=32768)
    (tmp_path / "m-Q4_K_M.gguf").write_bytes(gguf_bytes(meta, filler=1 << 20))
    harness = LlamaCpp(HarnessContext(model_dirs=(tmp_path,)))
    spec = ModelSpec(model_id="m", harness="llamacpp", source="m-Q4_K_M.gguf", options=options)
    plan = await harness.preflight(spec, Inventory(ram_available_mb=ram_mb))
    assert plan.context == context


def test_server_side_sampling_defaults_are_typed_load_options():
    argv, _ = build(PlacementPlan(files=("/m/q.gguf",)), temperature=0.2, top_p=0.9, repeat_penalty=1.1)
    assert (arg(argv, "--temp"), arg(argv, "--top-p"), arg(argv, "--repeat-penalty")) == ("0.2", "0.9", "1.1")
    assert {"temperature", "top_p", "repeat_penalty"} <= LlamaCpp.load_options  # no executable, safe over HTTP
    start = len(argv) - 1 - argv[::-1].index("-m")
    parse_args(argv[start:])  # the bundled server takes them


@pytest.mark.parametrize(("task", "flags"), [("chat", []), ("embed", ["--embedding"]), ("rerank", ["--reranking"])])
def test_a_model_is_started_for_its_task(task, flags):
    spec = ModelSpec(model_id="m", task=task)
    argv = LlamaCpp(HarnessContext()).command(spec, PlacementPlan(files=("/m/q.gguf",)), 5, LlamaCppOptions())
    assert [a for a in argv if a in ("--embedding", "--reranking")] == flags
    start = len(argv) - 1 - argv[::-1].index("-m")
    args = parse_args(argv[start:])  # the bundled server takes them too
    assert (args.embedding, args.reranking) == ("--embedding" in flags, "--reranking" in flags)
