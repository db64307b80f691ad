"""A hostile hub: names from a listing, an ETag, a commit id or a revision never become paths outside the cache,
and the token never goes to a host the hub redirects to.

The real ``huggingface_hub`` client talks to a fake hub on loopback that lies (see ``tests/fakes/fake_hub.py``'s
hostile knobs); every pull is refused with a 422 ``unsafe_listing`` naming the entry, and a walk of the file
system around the cache finds nothing new outside it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.fakes.fake_hub import FakeHub, point_huggingface_hub_at
from tests.neuron.conftest import fake_model

MiB = 1024 * 1024
WEIGHTS = b"GGUF" + bytes(range(256)) * 4096  # 1 MiB + 4 bytes


def tree(root: Path) -> set[Path]:
    """Every path below ``root`` (links not followed)."""
    found = set()
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            found.add(Path(folder) / name)
    return found


@pytest.fixture
async def hostile(aiohttp_server, monkeypatch, tmp_path):
    """A fake hub with one honest GGUF repo; tests turn its hostile knobs. ``hub.cache`` is the neuron's cache,
    ``hub.outside`` a folder beside it where planted files would land."""
    fake = FakeHub(repos={"acme/tiny-GGUF": {"tiny-Q4_K_M.gguf": WEIGHTS, "README.md": b"# tiny\n"}})
    server = await aiohttp_server(fake.app())
    point_huggingface_hub_at(monkeypatch, str(server.make_url("")).rstrip("/"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    fake.cache = tmp_path / "hf-cache"  # type: ignore[attr-defined]
    fake.outside = tmp_path  # type: ignore[attr-defined]
    fake.server = server  # type: ignore[attr-defined]
    return fake


async def pull(neuron, hub, source: str = "hf:acme/tiny-GGUF"):
    client = await neuron(neuron={"hf_cache_dir": str(hub.cache)})
    before = tree(hub.outside)
    resp = await client.post("/models/pull", json={"source": source, "quant": "Q4_K_M", "harness": "fake"})
    body = await resp.json()
    new = tree(hub.outside) - before
    escaped = [p for p in new if not p.is_relative_to(hub.cache)]
    assert escaped == [], f"written outside the cache: {escaped}"
    return resp.status, body


@pytest.mark.parametrize(
    "name",
    [
        "sub/../../../../../../../../{outside}/planted-Q4_K_M.gguf",
        "{outside}/planted-abs-Q4_K_M.gguf",  # absolute
        "../planted-Q4_K_M.gguf",
        "sub\\..\\..\\planted-Q4_K_M.gguf",
        "sub/\0/planted-Q4_K_M.gguf",
        "sub//planted-Q4_K_M.gguf",
        "./planted-Q4_K_M.gguf",
        "line\nbreak-Q4_K_M.gguf",
    ],
)
async def test_listing_names_that_leave_the_snapshot_are_refused(neuron, hostile, name):
    planted = name.format(outside=str(hostile.outside).lstrip("/") if name.startswith("sub/") else hostile.outside)
    hostile.extra_siblings["acme/tiny-GGUF"] = [
        {"rfilename": planted, "size": 9, "lfs": {"sha256": "b" * 64, "size": 9, "pointerSize": 134}}
    ]
    status, body = await pull(neuron, hostile)
    err = body["error"]
    assert status == 422 and err["kind"] == "unsafe_listing", body
    assert "planted" in err["message"] or "break" in err["message"]
    assert hostile.file_downloads == []  # refused from the listing: nothing fetched
    assert not list(hostile.outside.rglob("planted*"))


@pytest.mark.parametrize(
    "etag",
    ['"../../../pwned-by-etag"', '"/tmp/pwned-by-etag"', '"abc"', 'W/"' + "z" * 64 + '"'],
)
async def test_an_etag_that_is_no_content_hash_is_refused(neuron, hostile, etag):
    hostile.etag = etag
    victim = hostile.outside / "pwned-by-etag"
    status, body = await pull(neuron, hostile)
    assert status == 422 and body["error"]["kind"] == "unsafe_listing", body
    assert "ETag" in body["error"]["message"]
    assert not victim.exists()


async def test_an_etag_naming_an_existing_file_is_not_linked_as_the_model(neuron, hostile):
    victim = hostile.outside / "local-secret"
    victim.write_bytes(b"not a model")
    hostile.etag = '"../../../local-secret"'
    status, body = await pull(neuron, hostile)
    assert status == 422 and body["error"]["kind"] == "unsafe_listing"
    links = [p for p in tree(hostile.cache) if p.is_symlink()]
    assert all(p.resolve() != victim.resolve() for p in links)
    assert victim.read_bytes() == b"not a model"


@pytest.mark.parametrize("commit", ["../../../sha-escape", "/abs/commit", "main", "A" * 40, "a" * 39])
async def test_a_commit_that_is_no_commit_id_is_refused(neuron, hostile, commit):
    hostile.commit = commit
    status, body = await pull(neuron, hostile)
    assert status == 422 and body["error"]["kind"] == "unsafe_listing", body
    assert "commit" in body["error"]["message"]
    assert not (hostile.outside / "sha-escape").exists()


@pytest.mark.parametrize(
    "revision",
    ["../../../refwrite-escape", "main/../../x", "refs/heads/../x", ".hidden", "v1.lock", "a//b", "x/", "refs/pr/x"],
)
async def test_a_revision_that_is_no_branch_tag_or_commit_is_refused(neuron, hostile, revision):
    status, body = await pull(neuron, hostile, f"hf:acme/tiny-GGUF@{revision}")
    assert status == 400, body
    assert "source" in body["error"]["message"]
    assert hostile.info_requests == 0
    assert not (hostile.outside / "refwrite-escape").exists()


async def test_good_revisions_still_pass(neuron, hostile):
    hostile.commit = "c" * 40
    for revision in ("main", "c" * 40):
        status, body = await pull(neuron, hostile, f"hf:acme/tiny-GGUF@{revision}")
        assert status == 200, body
    ref = hostile.cache / "models--acme--tiny-GGUF" / "refs" / "main"
    assert ref.read_text() == "c" * 40


async def test_the_token_is_not_sent_to_a_host_the_hub_redirects_to(neuron, hostile, aiohttp_server, monkeypatch):
    cdn = await aiohttp_server(hostile.cdn_app())
    hostile.redirect_base = str(cdn.make_url("")).rstrip("/")
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    client = await neuron(neuron={"hf_cache_dir": str(hostile.cache)}, models=[])
    resp = await client.post("/models/pull", json={"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"})
    assert resp.status == 200, await resp.text()
    assert hostile.cdn_authorizations, "the download never went to the redirect's host"
    assert all("hf_secret" not in a for a in hostile.cdn_authorizations), hostile.cdn_authorizations
    blob = hostile.cache / "models--acme--tiny-GGUF" / "snapshots"
    assert next(blob.rglob("tiny-Q4_K_M.gguf")).read_bytes() == WEIGHTS


async def test_a_catalogue_load_with_a_hostile_listing_is_refused(neuron, hostile):
    hostile.extra_siblings["acme/tiny-GGUF"] = [{"rfilename": "/etc/passwd", "size": 1}]
    model = fake_model("tiny", source="hf:acme/tiny-GGUF", quant="Q4_K_M")
    client = await neuron(neuron={"hf_cache_dir": str(hostile.cache)}, models=[model])
    resp = await client.post("/models/load", json={"model_id": "tiny"})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["kind"] == "unsafe_listing", body
    assert "/etc/passwd" in body["error"]["message"]


async def test_a_directory_source_with_a_link_out_of_the_model_dirs_is_refused(neuron, models_dir, tmp_path):
    model = models_dir / "linked"
    model.mkdir()
    (model / "weights-Q4_K_M.gguf").write_bytes(b"GGUF" + b"\0" * 64)
    secret = tmp_path / "secret.txt"
    secret.write_text("private")
    (model / "tokenizer.json").symlink_to(secret)
    client = await neuron(models=[fake_model("linked", source="linked")])
    resp = await client.post("/models/load", json={"model_id": "linked"})
    body = await resp.json()
    assert resp.status == 422 and body["error"]["kind"] == "path_not_allowed", body
    assert "tokenizer.json" in body["error"]["message"]
    # a link that stays inside the model dirs is fine
    (model / "tokenizer.json").unlink()
    (models_dir / "shared-tokenizer.json").write_text("{}")
    (model / "tokenizer.json").symlink_to(models_dir / "shared-tokenizer.json")
    ok = await client.post("/models/load", json={"model_id": "linked"})
    assert ok.status == 200, await ok.text()


async def test_a_download_whose_host_cannot_be_reached_is_a_502_and_the_next_pull_works(neuron, hostile):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    hostile.redirect_base = f"http://127.0.0.1:{closed}"
    client = await neuron(neuron={"hf_cache_dir": str(hostile.cache)})
    body = {"source": "hf:acme/tiny-GGUF", "quant": "Q4_K_M", "harness": "fake"}
    resp = await client.post("/models/pull", json=body)
    err = (await resp.json())["error"]
    assert resp.status == 502, err
    assert "tiny-Q4_K_M.gguf" in err["message"] and "the next pull resumes" in err["message"]
    hostile.redirect_base = ""
    again = await client.post("/models/pull", json=body)
    assert again.status == 200, await again.text()
