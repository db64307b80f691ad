"""Models from a Hugging Face hub: preflight from the listing, pulls with progress, resume, sharing, gating.

The real ``huggingface_hub`` client talks to a fake hub on loopback (``HF_ENDPOINT``); the neuron runs the
fake engine, which reads GGUF files.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import try_to_load_from_cache

from helexa.modelfiles.hub import HfSource
from helexa.modelfiles.shape import Shape
from helexa.neuron.sources import Sources
from tests.fakes.fake_harness import FakeHarness
from tests.fakes.fake_hub import FakeHub, point_huggingface_hub_at
from tests.fakes.gguf_file import gguf_bytes, llama_metadata
from tests.neuron.conftest import fake_model

MiB = 1024 * 1024
DENSE_CONFIG = {
    "num_hidden_layers": 4,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "hidden_size": 512,
    "max_position_embeddings": 4096,
}
LONG_CONTEXT = llama_metadata(layers=80, heads=64, kv_heads=8, width=8192, context=131072, vocab=1000)


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def gguf(seed: int, size: int) -> bytes:
    block = bytes((seed + i) % 251 for i in range(4096))
    return (b"GGUF" + block * (size // len(block) + 1))[:size]


@pytest.fixture
async def hub(aiohttp_server, monkeypatch, tmp_path):
    """A fake hub serving a GGUF repo with two quants, a split one, a safetensors repo and a gated repo."""
    fake = FakeHub(
        repos={
            "acme/tiny-GGUF": {
                "tiny-Q4_K_M.gguf": gguf(1, 3 * MiB),
                "tiny-Q8_0.gguf": gguf(2, 5 * MiB),
                "README.md": b"# tiny\n",
            },
            "acme/split-GGUF": {
                "split-Q4_K_M-00001-of-00002.gguf": gguf(3, MiB),
                "split-Q4_K_M-00002-of-00002.gguf": gguf(4, MiB),
                "split-Q8_0.gguf": gguf(5, 2 * MiB),
            },
            "acme/dense": {
                "config.json": b'{"num_hidden_layers": 2}',
                "model-00001-of-00002.safetensors": b"\0" * 1000,
                "model-00002-of-00002.safetensors": b"\0" * 1000,
                "pytorch_model.bin": b"\0" * 5000,
            },
            "acme/gated-GGUF": {"gated-Q4_K_M.gguf": gguf(6, MiB)},
            "acme/long-GGUF": {"long-Q4_K_M.gguf": gguf_bytes(LONG_CONTEXT, filler=2 * MiB)},
            "acme/dense-shaped": {
                "config.json": json.dumps(DENSE_CONFIG).encode(),
                "model.safetensors": b"\0" * 1000,
            },
        },
        gated={"acme/gated-GGUF": "hf_sesame"},
    )
    server = await aiohttp_server(fake.app())
    point_huggingface_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake.cache = tmp_path / "hf-cache"  # type: ignore[attr-defined]
    return fake


async def make(neuron, hub, *models, **section):
    return await neuron(neuron={"hf_cache_dir": str(hub.cache), **section}, models=list(models))


async def test_pull_fetches_the_quant_into_the_huggingface_cache(neuron, hub):
    client = await make(neuron, hub)
    resp = await client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "q8_0", "harness": "fake"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "ready" and body["files"] == ["tiny-Q8_0.gguf"]
    assert [d[0] for d in hub.downloads] == ["acme/tiny-GGUF/tiny-Q8_0.gguf"]  # only the quant asked for
    # huggingface_hub itself finds the file where helexa put it (one cache for every engine)
    cached = try_to_load_from_cache("acme/tiny-GGUF", "tiny-Q8_0.gguf", cache_dir=hub.cache)
    assert isinstance(cached, str) and read(cached) == hub.repos["acme/tiny-GGUF"]["tiny-Q8_0.gguf"]
    again = await client.post("/models/pull", json={"source": "acme/tiny-GGUF", "quant": "Q8_0", "harness": "fake"})
    assert again.status == 200 and len(hub.downloads) == 1  # a bare org/name works; nothing fetched twice


async def test_load_pulls_then_serves_and_shows_progress(neuron, hub):
    hub.rate_bytes_per_s = 2 * MiB  # ~1.5 s for the 3 MiB quant
    model = fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M")
    client = await make(neuron, hub, model)
    resp = await client.post("/models/load", json={"model_id": "tiny", "wait": False})
    assert resp.status == 202
    seen = None
    for _ in range(100):
        models = {m["id"]: m for m in (await (await client.get("/models")).json())["models"]}
        info = models["tiny"]
        if info["status"] == "downloading" and info["download"]["bytes_done"] > 0:
            seen = info["download"]
            break
        await asyncio.sleep(0.05)
    assert seen is not None, "never saw the download in progress"
    assert seen["bytes_total"] == 3 * MiB and 0 < seen["bytes_done"] <= seen["bytes_total"]
    assert seen["source"] == "hf:acme/tiny-GGUF" and seen["file"] == "tiny-Q4_K_M.gguf"
    pulls = (await (await client.get("/pulls")).json())["pulls"]
    assert [p["source"] for p in pulls] == ["hf:acme/tiny-GGUF"]
    loaded = await client.post("/models/load", json={"model_id": "tiny"})
    assert loaded.status == 200, await loaded.text()
    chat = await client.post(
        "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert chat.status == 200


async def test_wrong_quant_is_refused_from_the_listing_with_the_nearest_name(neuron, hub):
    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q8_K"))
    resp = await client.post("/models/load", json={"model_id": "tiny"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "quant_not_found"
    assert "Q8_0" in err["suggestion"] and "Q4_K_M" in err["message"]
    assert hub.file_downloads == []  # nothing fetched


async def test_split_gguf_files_come_together(neuron, hub):
    client = await make(neuron, hub)
    resp = await client.post(
        "/models/pull", json={"source": "hf:acme/split-GGUF", "quant": "Q4_K_M", "harness": "fake"}
    )
    assert (await resp.json())["files"] == [
        "split-Q4_K_M-00001-of-00002.gguf",
        "split-Q4_K_M-00002-of-00002.gguf",
    ]


async def test_gated_repo_needs_a_token(neuron, hub, monkeypatch):
    client = await make(neuron, hub)
    resp = await client.post("/models/pull", json={"source": "hf:acme/gated-GGUF", "harness": "fake"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "auth_required" and "HF_TOKEN" in err["suggestion"]
    monkeypatch.setenv("HF_TOKEN", "hf_sesame")
    ok = await client.post("/models/pull", json={"source": "hf:acme/gated-GGUF", "harness": "fake"})
    assert ok.status == 200, await ok.text()


async def test_unknown_repo_and_revision(neuron, hub):
    client = await make(neuron, hub)
    for source in ("hf:acme/nope", "hf:acme/tiny-GGUF@v9"):
        resp = await client.post("/models/pull", json={"source": source, "harness": "fake", "quant": "Q4_K_M"})
        err = (await resp.json())["error"]
        assert resp.status == 422 and err["kind"] == "source_missing", err
    bad = await client.post("/models/pull", json={"source": "hf:../../etc", "harness": "fake"})
    assert bad.status == 400


async def test_safetensors_and_tensor_parallel_preflight_from_the_listing(neuron, hub):
    client = await make(neuron, hub, fake_model("dense", source="hf:acme/dense"))
    resp = await client.post("/models/load", json={"model_id": "dense"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "unsupported_format" and "safetensors" in err["message"]
    tp = await client.post(
        "/models/load",
        json={
            "model_id": "tp",
            "harness": "fake",
            "source": "hf:acme/tiny-GGUF",
            "quant": "Q4_K_M",
            "tensor_parallel": 2,
        },
    )
    err = (await tp.json())["error"]
    assert tp.status == 422 and err["kind"] == "tensor_parallel"
    assert hub.file_downloads == []


async def test_too_big_for_memory_is_refused_before_downloading(neuron, hub):
    model = fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q8_0", vram_mb=10_000_000)
    client = await make(neuron, hub, model)
    resp = await client.post("/models/load", json={"model_id": "tiny"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "insufficient_memory"
    assert hub.file_downloads == []


async def test_interrupted_download_resumes_with_a_range_request(neuron, hub):
    hub.cut_after_bytes = MiB + 123  # the connection drops mid-file
    client = await make(neuron, hub)
    resp = await client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"})
    assert resp.status == 200, await resp.text()
    ranges = [r for _, r in hub.downloads]
    assert ranges == ["", f"bytes={MiB}-"], ranges  # resumed after the last whole chunk written
    cached = try_to_load_from_cache("acme/tiny-GGUF", "tiny-Q4_K_M.gguf", cache_dir=hub.cache)
    assert read(cached) == hub.repos["acme/tiny-GGUF"]["tiny-Q4_K_M.gguf"]


async def test_unload_cancels_the_download_and_the_next_load_resumes_it(neuron, hub):
    hub.rate_bytes_per_s = MiB  # 3 s for the file
    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"))
    await client.post("/models/load", json={"model_id": "tiny", "wait": False})
    blobs = hub.cache / "models--acme--tiny-GGUF" / "blobs"
    for _ in range(100):
        partial = list(blobs.glob("*.incomplete")) if blobs.exists() else []
        if partial and partial[0].stat().st_size > 256 * 1024:
            break
        await asyncio.sleep(0.05)
    resp = await client.post("/models/unload", json={"model_id": "tiny"})
    assert resp.status == 200
    for _ in range(100):  # until no download runs: the download thread noticed the cancel (within a chunk)
        if not (await (await client.get("/pulls")).json())["pulls"]:
            break
        await asyncio.sleep(0.05)
    partial = list(blobs.glob("*.incomplete"))
    assert partial, "the partial file was not kept"
    kept = partial[0].stat().st_size
    assert 0 < kept < 3 * MiB
    models = {m["id"]: m for m in (await (await client.get("/models")).json())["models"]}
    assert models["tiny"]["status"] == "unloaded"
    hub.rate_bytes_per_s = 0
    loaded = await client.post("/models/load", json={"model_id": "tiny"})
    assert loaded.status == 200, await loaded.text()
    assert hub.file_downloads[-1][1] == f"bytes={kept}-"


async def test_concurrent_loads_share_one_download(neuron, hub):
    hub.rate_bytes_per_s = 4 * MiB
    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"))
    pull = client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"})
    answers = await asyncio.gather(
        client.post("/models/load", json={"model_id": "tiny"}),
        pull,
        client.post("/models/load", json={"model_id": "tiny"}),
    )
    assert [a.status for a in answers] == [200, 200, 200]
    assert len(hub.file_downloads) == 1


async def test_offline_uses_the_cache(neuron, hub, monkeypatch):
    from huggingface_hub import constants

    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"))
    assert (
        await client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"})
    ).status == 200
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = hub.info_requests
    loaded = await client.post("/models/load", json={"model_id": "tiny"})
    assert loaded.status == 200, await loaded.text()
    assert hub.info_requests == before  # not even a listing
    other = await client.post("/models/pull", json={"source": "hf:acme/split-GGUF", "quant": "Q8_0", "harness": "fake"})
    err = (await other.json())["error"]
    assert other.status == 422 and err["kind"] == "hub_unreachable"


async def test_downloads_off(neuron, hub):
    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"), downloads=False)
    resp = await client.post("/models/load", json={"model_id": "tiny"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "download_disabled"
    assert hub.file_downloads == []


class DenseFake(FakeHarness):
    """The fake engine, as a harness that reads safetensors (like vLLM)."""

    name = "dense"
    formats = frozenset({"safetensors"})


async def test_dense_repo_downloads_config_and_weights_only(neuron, hub):
    client = await neuron(neuron={"hf_cache_dir": str(hub.cache)}, harnesses={"fake": FakeHarness, "dense": DenseFake})
    resp = await client.post("/models/pull", json={"source": "hf:acme/dense", "harness": "dense"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["files"] == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    tp = await client.post(
        "/models/load",
        json={"model_id": "dense-tp", "harness": "dense", "source": "hf:acme/dense", "tensor_parallel": 2},
    )
    err = (await tp.json())["error"]
    assert tp.status == 422 and err["kind"] == "tensor_parallel" and "GPU" in err["message"]


async def test_pull_refuses_control_characters_naming_the_field(neuron, hub):
    client = await make(neuron, hub)
    resp = await client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "Q4\n_K_M"})
    error = (await resp.json())["error"]
    assert resp.status == 400 and error["param"] == "quant" and "control characters" in error["message"]


async def test_kv_cache_from_the_gguf_header_is_counted_before_downloading(neuron, hub):
    """A small file whose header says 80 layers x 8 KV heads x 128k context: 40 GiB of KV cache at its trained
    context — refused from the first megabyte of the file (a ranged request), no download."""
    client = await make(neuron, hub, fake_model("long", source="hf:acme/long-GGUF", quant="Q4_K_M"))
    resp = await client.post("/models/load", json={"model_id": "long"})
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "insufficient_memory", err
    assert "needs 4" in err["message"]  # 40,960 MiB of KV cache + the weights
    # only the first MiB was read (by the load, and maybe by the catalogue check at start), never the file
    assert set(hub.downloads) == {("acme/long-GGUF/long-Q4_K_M.gguf", f"bytes=0-{MiB - 1}")}


async def test_a_dense_model_shape_comes_from_its_config_json(hub):
    sources = Sources(hub.cache, (), downloads=True)
    vllm = SimpleNamespace(name="vllm", formats=frozenset({"safetensors"}))
    listing, selection = await sources.select(HfSource("acme/dense-shaped", "main"), quant="", harness=vllm)
    assert await sources.remote_shape(listing, selection) == Shape(4, 2, 64, 64, 4096)
    assert await sources.remote_shape(listing, selection) == Shape(4, 2, 64, 64, 4096)  # remembered: no 2nd read
    assert hub.downloads == [("acme/dense-shaped/config.json", f"bytes=0-{len(json.dumps(DENSE_CONFIG)) - 1}")]
    assert hub.file_downloads == []
    await sources.close()


async def test_bench_pull_measures_download_and_load_once(neuron, hub, tmp_path):
    from helexa.bench.runner import Plan, run_once
    from helexa.bench.store import Store

    hub.rate_bytes_per_s = 2 * MiB  # ~1.5 s for the 3 MiB quant
    client = await make(neuron, hub, fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"))
    store = Store(tmp_path / "bench.sqlite")
    plan = Plan(models=["tiny"], scenarios=["pull"], repeat=1, quick=True)
    said: list[str] = []
    url = str(client.make_url("")).rstrip("/")
    for _ in range(100):  # the neuron checks its catalogue in the background at start
        (card,) = (await (await client.get("/models")).json())["models"]
        if card["availability"]:
            break
        await asyncio.sleep(0.05)
    assert card["availability"] == "download" and card["download_bytes"] == 3 * MiB
    assert await run_once(url, store, plan, say=said.append) == 1, said
    (row,) = store.rows()
    assert row["ok"] and row["scenario"] == "pull", (row, said)
    seconds = float(row["detail"].removeprefix("download 3.0 MiB in ").split("s", 1)[0])
    assert seconds >= 1.4 and "MiB/s) + load and first token" in row["detail"], row["detail"]
    assert row["swap_seconds"] >= 1.0
    # the files are here now: a second run has nothing to measure and records nothing
    plan = Plan(models=["tiny"], scenarios=["pull"], repeat=2, quick=True)
    assert await run_once(url, store, plan, say=said.append) == 0
    assert len(store.rows()) == 1 and "already on the target" in said[-1]


async def test_a_corrupt_download_is_refused_and_removed_then_fetched_again(neuron, hub):
    hub.corrupt_next = True
    client = await make(neuron, hub)
    body = {"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"}
    resp = await client.post("/models/pull", json=body)
    err = (await resp.json())["error"]
    assert resp.status == 422 and err["kind"] == "checksum_mismatch", err
    assert not list(hub.cache.rglob("*.incomplete")) and not list(hub.cache.rglob("blobs/*"))
    again = await client.post("/models/pull", json=body)
    assert again.status == 200, await again.text()
    cached = try_to_load_from_cache("acme/tiny-GGUF", "tiny-Q4_K_M.gguf", cache_dir=hub.cache)
    assert read(cached) == hub.repos["acme/tiny-GGUF"]["tiny-Q4_K_M.gguf"]


async def test_a_model_that_could_never_fit_is_listed_unavailable(neuron, hub):
    """The catalogue check reads the same header: the long-context model needs more than the host has even
    with nothing loaded, so /models says unavailable (insufficient_memory) before anyone asks for it."""
    models = [
        fake_model("long", source="hf:acme/long-GGUF", quant="Q4_K_M"),
        fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M"),
    ]
    client = await make(neuron, hub, *models)
    for _ in range(100):
        cards = {m["id"]: m for m in (await (await client.get("/models")).json())["models"]}
        if all(c["availability"] for c in cards.values()):
            break
        await asyncio.sleep(0.05)
    assert (cards["long"]["availability"], cards["long"]["unavailable_kind"]) == ("unavailable", "insufficient_memory")
    assert (cards["tiny"]["availability"], cards["tiny"]["download_bytes"]) == ("download", 3 * MiB)
    assert hub.file_downloads == []


async def test_a_local_model_that_could_never_fit_is_listed_unavailable(neuron, models_dir):
    (models_dir / "long-local.gguf").write_bytes(gguf_bytes(LONG_CONTEXT, filler=MiB))
    client = await neuron(models=[fake_model("long-local", source="long-local.gguf")])
    for _ in range(100):
        (card,) = (await (await client.get("/models")).json())["models"]
        if card["availability"]:
            break
        await asyncio.sleep(0.05)
    assert (card["availability"], card["unavailable_kind"]) == ("unavailable", "insufficient_memory")


@pytest.mark.parametrize(
    ("size", "expected"), [(2, ("download", 5 * MiB, "")), (1, ("unavailable", 0, "insufficient_memory"))]
)
async def test_a_gang_member_of_a_hub_model_needs_only_its_share_before_downloading(hub, size, expected):
    """A model larger than one host, served by a gang of two: each member's neuron checks its share before the
    download, as the harness's preflight will once the files are here (both go through one fit function). It
    was refused whole (insufficient_memory) before anything was fetched."""
    from helexa import HarnessContext, Inventory, ModelSpec, RankSpec

    sources = Sources(hub.cache, (), downloads=True)
    harness = FakeHarness(HarnessContext())
    rank = RankSpec(gang="abc123", rank=0, size=2, peers=["10.0.0.1", "10.0.0.2"]) if size == 2 else None
    spec = ModelSpec(model_id="big", harness="fake", source="hf:acme/tiny-GGUF", quant="Q8_0", vram_mb=1500, rank=rank)
    host = Inventory(ram_available_mb=1000)  # half the model fits, the whole does not
    assert await sources.availability(spec, harness, host) == expected
    assert hub.file_downloads == []
    await sources.close()
