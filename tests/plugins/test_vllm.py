"""The vLLM harness: command line and environment from plans and options, preflight, failure diagnosis,
engine metrics, and the sleep tier against a fake engine that implements vLLM's sleep endpoints."""

from __future__ import annotations

import json
import sys

import pytest

from helexa import HarnessContext, HarnessState, Inventory, ModelSpec, PlacementPlan
from helexa.engine.harness import GpuState
from helexa.engine.process import parse_engine_load
from helexa.errors import PreflightError
from helexa_vllm import Vllm, VllmOptions
from tests.fakes.fake_harness import FAKE_ENGINE

SPEC = ModelSpec(model_id="Qwen/Qwen3-8B")
GPU_PLAN = PlacementPlan(
    devices=(2, 3), tensor_parallel=2, source="/models/qwen", vram_mb=24000, device_vram_mb=(24576, 24576)
)


def arg(argv, flag):
    return argv[argv.index(flag) + 1]


def test_gpu_command_line():
    harness = Vllm(HarnessContext())
    options = VllmOptions(
        max_model_len=32768,
        tool_call_parser="hermes",
        reasoning_parser="qwen3",
        quantization="fp8",
        distributed_executor_backend="ray",
        sleep_mode=True,
        enforce_eager=True,
    )
    argv = harness.command(SPEC, GPU_PLAN, 20005, options)
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert (arg(argv, "--model"), arg(argv, "--served-model-name")) == ("/models/qwen", "Qwen/Qwen3-8B")
    assert (arg(argv, "--host"), arg(argv, "--port")) == ("127.0.0.1", "20005")
    assert arg(argv, "--tensor-parallel-size") == "2"
    assert arg(argv, "--gpu-memory-utilization") == "0.49"  # 12000 MiB of each 24576 MiB card
    assert arg(argv, "--max-model-len") == "32768"
    assert arg(argv, "--quantization") == "fp8"
    assert arg(argv, "--tool-call-parser") == "hermes" and "--enable-auto-tool-choice" in argv
    assert arg(argv, "--reasoning-parser") == "qwen3"
    assert arg(argv, "--distributed-executor-backend") == "ray"
    assert "--enable-sleep-mode" in argv and "--enforce-eager" in argv
    env = harness.environment(SPEC, GPU_PLAN, options)
    assert env == {"CUDA_VISIBLE_DEVICES": "2,3", "VLLM_SERVER_DEV_MODE": "1"}


def test_cpu_command_line_has_no_gpu_flags_and_sets_the_kv_cache():
    harness = Vllm(HarnessContext())
    plan = PlacementPlan(source="/models/tiny", vram_mb=500)
    options = VllmOptions(
        sleep_mode=True, dtype="float32", cpu_kv_cache_gib=2, command=["/opt/venv/bin/python", "-m", "vllm.x"]
    )
    argv = harness.command(SPEC, plan, 1, options)
    assert argv[:3] == ["/opt/venv/bin/python", "-m", "vllm.x"]
    assert "--gpu-memory-utilization" not in argv and "--enable-sleep-mode" not in argv
    assert arg(argv, "--dtype") == "float32"
    assert harness.environment(SPEC, plan, options) == {"CUDA_VISIBLE_DEVICES": "", "VLLM_CPU_KVCACHE_SPACE": "2"}


def test_explicit_memory_utilization_wins():
    argv = Vllm(HarnessContext()).command(SPEC, GPU_PLAN, 1, VllmOptions(gpu_memory_utilization=0.8))
    assert arg(argv, "--gpu-memory-utilization") == "0.80"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "out of memory at start"),
        (
            "ValueError: Model architectures ['FooForCausalLM'] are not supported for now.",
            "unsupported model architecture (FooForCausalLM)",
        ),
        ("OSError: [Errno 98] Address already in use", "port already in use"),
    ],
)
def test_failures_are_diagnosed(line, reason):
    assert Vllm(HarnessContext()).diagnose(["INFO starting", line, "INFO exiting"]).startswith(reason)


def test_engine_metrics_are_parsed():
    text = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 5.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
"""
    load = parse_engine_load(text, Vllm.metric_names)
    assert (load.waiting, load.running, load.kv_cache) == (5, 3, 0.25)


@pytest.fixture
def checkpoint(tmp_path):
    d = tmp_path / "models" / "qwen"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x" * 2048)
    (d / "config.json").write_text(json.dumps({"num_attention_heads": 6}))
    return d


async def test_tensor_parallel_must_divide_the_attention_heads(checkpoint):
    harness = Vllm(HarnessContext(model_dirs=(checkpoint.parent,)))
    gpus = tuple(GpuState(i, "GPU", 24000, 24000) for i in range(4))
    spec = ModelSpec(model_id="qwen", source="qwen", tensor_parallel=4, vram_mb=1000)
    with pytest.raises(PreflightError) as info:
        await harness.preflight(spec, Inventory(gpus=gpus))
    assert info.value.kind == "tensor_parallel" and "6 attention heads" in info.value.message
    assert info.value.suggestion == "use one of: 1, 2, 3"
    ok = await harness.preflight(
        ModelSpec(model_id="qwen", source="qwen", tensor_parallel=2, vram_mb=1000), Inventory(gpus=gpus)
    )
    assert ok.devices == (0, 1) and ok.device_vram_mb == (24000, 24000)


async def test_gguf_needs_the_gguf_plugin(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    harness = Vllm(HarnessContext(model_dirs=(tmp_path,)))
    with pytest.raises(PreflightError) as info:
        await harness.preflight(ModelSpec(model_id="m", source="m.gguf"), Inventory(ram_available_mb=10**6))
    assert info.value.kind == "unsupported_format"


def fake_engine_spec(**options) -> ModelSpec:
    return ModelSpec(
        model_id="m", options={"command": [sys.executable, str(FAKE_ENGINE), "--sleep-endpoints"], **options}
    )


async def test_sleep_and_wake_on_a_gpu_plan(tmp_path):
    harness = Vllm(HarnessContext(port_range=(47000, 47999), ready_timeout_s=20, stop_timeout_s=2))
    spec = fake_engine_spec(sleep_mode=True)
    plan = PlacementPlan(devices=(0,), source=str(tmp_path), vram_mb=1000, device_vram_mb=(24000,))
    await harness.load(spec, plan)
    try:
        pid = harness.pid("m")
        assert await harness.sleep("m") is True
        assert await harness.state("m") == HarnessState.SLEEPING
        assert await harness.wake("m") is True
        assert await harness.state("m") == HarnessState.READY
        assert harness.pid("m") == pid  # the same process: no cold start
    finally:
        await harness.unload("m")
    assert harness.pid("m") is None


async def test_without_a_gpu_sleep_falls_back_to_a_real_stop(tmp_path):
    harness = Vllm(HarnessContext(port_range=(47000, 47999), ready_timeout_s=20, stop_timeout_s=2))
    spec = fake_engine_spec(sleep_mode=True)
    await harness.load(spec, PlacementPlan(source=str(tmp_path)))
    try:
        assert await harness.sleep("m") is False  # sleep mode is unavailable on CPU
    finally:
        await harness.unload("m")


@pytest.mark.parametrize("dtype", ["--trust-remote-code", "float8; rm -rf /", "FLOAT16", ""])
def test_dtype_is_a_fixed_list(dtype):
    """dtype is a load option (an HTTP load request may set it), so it is never free text in argv."""
    from helexa.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        Vllm.parse_options({"dtype": dtype}, model_id="m")
    assert "dtype" in caught.value.message and "bfloat16" in caught.value.message
    assert Vllm.parse_options({"dtype": "bfloat16"}, model_id="m").dtype == "bfloat16"


@pytest.mark.parametrize("task", ["embed", "rerank"])
def test_a_pooling_model_runs_on_the_pooling_runner(task):
    argv = Vllm(HarnessContext()).command(ModelSpec(model_id="m", task=task), GPU_PLAN, 1, VllmOptions())
    assert argv[argv.index("--runner") + 1] == "pooling"
    assert "--runner" not in Vllm(HarnessContext()).command(SPEC, GPU_PLAN, 1, VllmOptions())


async def test_a_task_the_harness_cannot_serve_is_refused_before_anything_starts():
    from helexa import PreflightError, ProcessHarness

    class ChatOnly(ProcessHarness):
        name = "chat-only"

        def command(self, spec, plan, port, options):
            raise AssertionError("never started")

    with pytest.raises(PreflightError) as refused:
        await ChatOnly(HarnessContext()).preflight(ModelSpec(model_id="m", task="rerank"), Inventory())
    assert refused.value.kind == "task_unsupported" and "'rerank'" in refused.value.message
