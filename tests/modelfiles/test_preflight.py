"""Preflight: every rejection kind, with the structured reason and a useful suggestion."""

from __future__ import annotations

from pathlib import Path

import pytest

from helexa.engine.harness import GpuState
from helexa.errors import PreflightError
from helexa.modelfiles.fit import choose_devices
from helexa.modelfiles.preflight import (
    check_format,
    classify_source,
    match_quant,
    resolve_local_source,
    resolve_packaged_source,
)


def rejected(kind: str, fn, *args, **kwargs) -> PreflightError:
    with pytest.raises(PreflightError) as info:
        fn(*args, **kwargs)
    assert info.value.kind == kind, info.value.message
    assert info.value.status == 422
    assert info.value.message
    return info.value


@pytest.fixture
def repo(tmp_path) -> Path:
    d = tmp_path / "Qwen3-8B-GGUF"
    d.mkdir()
    for name in ("Qwen3-8B-Q4_K_M.gguf", "Qwen3-8B-Q8_0.gguf", "Qwen3-8B-IQ4_XS.gguf", "mmproj-F16.gguf", "README.md"):
        (d / name).write_bytes(b"x" * 10)
    return d


def test_classify_gguf_directory(repo):
    info = classify_source("m", repo)
    assert info.kind == "gguf"
    assert len(info.files) == 4


def test_classify_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "config.json").write_text("{}")
    assert classify_source("m", tmp_path).kind == "safetensors"


def test_source_missing(tmp_path):
    rejected("source_missing", classify_source, "m", tmp_path / "nope")


def test_source_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("no weights")
    err = rejected("source_empty", classify_source, "m", tmp_path)
    assert err.suggestion


def test_source_mixed(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"x")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    rejected("source_mixed", classify_source, "m", tmp_path)


def test_unsupported_format_names_the_harness_that_can(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    info = classify_source("m", tmp_path)
    err = rejected("unsupported_format", check_format, "m", info, "llamacpp", frozenset({"gguf"}))
    assert "vllm" in err.suggestion


@pytest.mark.parametrize("quant", ["Q4_K_M", "q4_k_m", "q4-k-m", "Q4KM", "q8_0", "iq4_xs"])
def test_quant_matches_case_and_punctuation_insensitively(repo, quant):
    files = match_quant("m", classify_source("m", repo), quant)
    assert len(files) == 1
    assert (
        files[0]
        .name.lower()
        .replace("-", "_")
        .endswith(quant.lower().replace("-", "_").replace("q4km", "q4_k_m") + ".gguf")
    )


def test_quant_typo_gets_the_nearest_suggestion(repo):
    err = rejected("quant_not_found", match_quant, "m", classify_source("m", repo), "Q4_K_S")
    assert err.suggestion == "did you mean quant = 'Q4_K_M'?"
    assert "available: IQ4_XS, Q4_K_M, Q8_0" in err.message
    err = rejected("quant_not_found", match_quant, "m", classify_source("m", repo), "Q8_1")
    assert err.suggestion == "did you mean quant = 'Q8_0'?"


def test_several_quants_and_none_asked_is_ambiguous(repo):
    err = rejected("quant_ambiguous", match_quant, "m", classify_source("m", repo), "")
    assert "IQ4_XS, Q4_K_M, Q8_0" in err.suggestion


def test_split_gguf_files_stay_together(tmp_path):
    for name in ("big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf", "big-Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"x")
    files = match_quant("m", classify_source("m", tmp_path), "q4_k_m")
    assert [f.name for f in files] == ["big-Q4_K_M-00001-of-00002.gguf", "big-Q4_K_M-00002-of-00002.gguf"]


def test_local_source_must_stay_inside_model_dirs(tmp_path, repo):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.gguf").write_bytes(b"x")
    dirs = [repo.parent / "sub"]
    dirs[0].mkdir()
    rejected("path_not_allowed", resolve_local_source, "m", str(outside / "x.gguf"), dirs)
    rejected("path_not_allowed", resolve_local_source, "m", "../elsewhere/x.gguf", dirs)
    (dirs[0] / "link").symlink_to(outside)
    rejected("path_not_allowed", resolve_local_source, "m", "link/x.gguf", dirs)
    rejected("source_missing", resolve_local_source, "m", "absent.gguf", dirs)
    (dirs[0] / "ok.gguf").write_bytes(b"x")
    assert resolve_local_source("m", "ok.gguf", dirs) == (dirs[0] / "ok.gguf").resolve()


def test_packaged_source_must_be_a_gguf_package(tmp_path):
    rejected("source_missing", resolve_packaged_source, "m", "pypi:os", [tmp_path])
    rejected("source_missing", resolve_packaged_source, "m", "pypi:nonexistent_model_gguf", [tmp_path])


GPUS = (GpuState(0, "RTX A", 24000, 20000), GpuState(1, "RTX B", 24000, 8000))


def test_devices_with_most_free_memory_are_chosen():
    assert choose_devices(
        "m", GPUS, needed_mb=6000, tensor_parallel=1, requested=None, ram_available_mb=0, cpu_ok=False
    ) == (0,)
    assert choose_devices(
        "m", GPUS, needed_mb=10000, tensor_parallel=2, requested=None, ram_available_mb=0, cpu_ok=False
    ) == (0, 1)


def test_tensor_parallel_larger_than_the_host():
    err = rejected(
        "tensor_parallel",
        choose_devices,
        "m",
        GPUS,
        needed_mb=1,
        tensor_parallel=4,
        requested=None,
        ram_available_mb=0,
        cpu_ok=False,
    )
    assert "tensor_parallel <= 2" in err.suggestion


def test_tensor_parallel_on_a_cpu_host():
    rejected(
        "tensor_parallel",
        choose_devices,
        "m",
        (),
        needed_mb=1,
        tensor_parallel=2,
        requested=None,
        ram_available_mb=10**6,
        cpu_ok=True,
    )


def test_requested_device_that_does_not_exist():
    rejected(
        "device_not_found",
        choose_devices,
        "m",
        GPUS,
        needed_mb=1,
        tensor_parallel=1,
        requested=[5],
        ram_available_mb=0,
        cpu_ok=False,
    )


def test_not_enough_vram_names_the_device():
    err = rejected(
        "insufficient_vram",
        choose_devices,
        "m",
        GPUS,
        needed_mb=20000,
        tensor_parallel=2,
        requested=None,
        ram_available_mb=0,
        cpu_ok=False,
    )
    assert "device 1 (RTX B) has 8000 MiB free" in err.message


def test_cpu_host_runs_cpu_capable_harnesses_in_ram():
    assert (
        choose_devices("m", (), needed_mb=500, tensor_parallel=1, requested=None, ram_available_mb=1000, cpu_ok=True)
        == ()
    )
    rejected(
        "insufficient_memory",
        choose_devices,
        "m",
        (),
        needed_mb=5000,
        tensor_parallel=1,
        requested=None,
        ram_available_mb=1000,
        cpu_ok=True,
    )
    rejected(
        "insufficient_vram",
        choose_devices,
        "m",
        (),
        needed_mb=5,
        tensor_parallel=1,
        requested=None,
        ram_available_mb=1000,
        cpu_ok=False,
    )


def test_select_from_listing():
    from helexa.errors import PreflightError
    from helexa.modelfiles.preflight import select_from_listing

    gguf_repo = [("a-Q4_K_M.gguf", 100), ("a-Q8_0.gguf", 200), ("mmproj-a-F16.gguf", 50), ("README.md", 1)]
    chosen = select_from_listing(
        "m", "hf:o/a", gguf_repo, quant="q8_0", harness="llamacpp", formats=frozenset({"gguf"}), tensor_parallel=1
    )
    assert (chosen.kind, chosen.files, chosen.weight_bytes) == ("gguf", ("a-Q8_0.gguf",), 200)
    with pytest.raises(PreflightError) as refused:
        select_from_listing(
            "m", "hf:o/a", gguf_repo, quant="Q4", harness="vllm", formats=frozenset({"gguf"}), tensor_parallel=2
        )
    assert refused.value.kind == "tensor_parallel"
    mixed = [("model.safetensors", 10), ("config.json", 1), ("gguf/a-Q4_K_M.gguf", 5)]
    with pytest.raises(PreflightError) as both:
        select_from_listing(
            "m", "hf:o/m", mixed, quant="", harness="vllm", formats=frozenset({"safetensors"}), tensor_parallel=1
        )
    assert both.value.kind == "source_mixed"
    by_quant = select_from_listing(
        "m", "hf:o/m", mixed, quant="Q4_K_M", harness="llamacpp", formats=frozenset({"gguf"}), tensor_parallel=1
    )
    assert by_quant.files == ("gguf/a-Q4_K_M.gguf",)  # a quant names GGUF files: the safetensors are ignored
    dense = [("model.safetensors", 10), ("config.json", 1), ("pytorch_model.bin", 10), ("original/x.pth", 9)]
    picked = select_from_listing(
        "m", "hf:o/d", dense, quant="", harness="vllm", formats=frozenset({"safetensors"}), tensor_parallel=4
    )
    assert (picked.files, picked.weight_bytes) == (("config.json", "model.safetensors"), 10)
    with pytest.raises(PreflightError) as empty:
        select_from_listing(
            "m",
            "hf:o/e",
            [("README.md", 1)],
            quant="",
            harness="vllm",
            formats=frozenset({"safetensors"}),
            tensor_parallel=1,
        )
    assert empty.value.kind == "source_empty"


def test_check_disk():
    from helexa.errors import PreflightError
    from helexa.modelfiles.preflight import check_disk

    check_disk("m", "/c", 2**30, 3 * 2**30)
    with pytest.raises(PreflightError) as full:
        check_disk("m", "/c", 5 * 2**30, 3 * 2**30)
    assert full.value.kind == "insufficient_disk" and "5.0 GiB" in full.value.message
