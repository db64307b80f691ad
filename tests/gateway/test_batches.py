"""The OpenAI Batch API through the gateway, with the official ``openai`` SDK where a client is involved (fake
neurons: what the engine answers is known, slow lines and errors can be scripted): the round trip, error and
expired lines, validation, cancel, ownership, key limits, batch priority (lines yield to interactive requests),
a restart in the middle, metrics, and what bad input gets."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time

import aiohttp
import openai
import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from helexa.cli.commands import cli
from helexa.gateway import batch_runner
from helexa.gateway.app import make_gateway_app
from helexa.gateway.batch_routes import batch_store_key
from helexa.server.app import registry_key
from tests.conftest import make_config, until
from tests.fakes.fake_neuron import FakeNeuron
from tests.gateway.conftest import entry, wait_healthy

KEY, OTHER, OPS = "sk-batch", "sk-other", "sk-ops"
KEYS = {
    "keys": [
        {"name": "alice", "key": KEY},
        {"name": "bob", "key": OTHER},
        {"name": "ops", "key": OPS, "scopes": ["admin", "inference"]},
    ]
}


def lines(n: int, *, model: str = "chat", url: str = "/v1/chat/completions", **body) -> bytes:
    rows = []
    for i in range(n):
        request = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], **body}
        rows.append({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": request})
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


async def chat_fleet(fleet, **sections):
    a = FakeNeuron("a")
    a.preload("chat")
    sections.setdefault("auth", KEYS)
    client, fakes = await fleet([a], models=[entry("chat", 600)], **sections)
    return client, fakes["a"]


def sdk(client, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=key, max_retries=0)


async def until_status(api: openai.AsyncOpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 20):
    deadline = time.monotonic() + timeout
    while True:
        batch = await api.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        await asyncio.sleep(0.05)


async def until_completed(api: openai.AsyncOpenAI, batch_id: str, n: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while (await api.batches.retrieve(batch_id)).request_counts.completed < n:
        assert time.monotonic() < deadline, f"fewer than {n} lines of {batch_id} completed"
        await asyncio.sleep(0.02)


def jsonl(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


async def test_the_sdk_round_trip(fleet):
    client, neuron = await chat_fleet(fleet)
    api = sdk(client)
    upload = await api.files.create(file=("questions.jsonl", lines(5)), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes == len(lines(5)) and upload.filename == "questions.jsonl"
    batch = await api.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert batch.status == "in_progress" and batch.request_counts.total == 5 and batch.metadata == {"job": "nightly"}
    assert batch.model == "chat" and batch.expires_at - batch.created_at == 24 * 3600
    done = await until_status(api, batch.id, ("completed",))
    assert (done.request_counts.completed, done.request_counts.failed) == (5, 0)
    assert done.error_file_id is None and done.completed_at >= done.in_progress_at
    assert done.usage.input_tokens == 5 * 7 and done.usage.output_tokens == 5 * len(neuron.reply.split())
    output = jsonl((await api.files.content(done.output_file_id)).read())
    assert [o["custom_id"] for o in output] == [f"req-{i}" for i in range(5)]  # file order, each once
    for o in output:
        assert o["error"] is None and o["response"]["status_code"] == 200 and o["id"].startswith("batch_req_")
        assert o["response"]["body"]["choices"][0]["message"]["content"] == neuron.reply
        assert o["response"]["request_id"].startswith(batch.id)
    assert neuron.served == ["chat"] * 5
    # the files and the batch are listed; the output file is the key's too
    files = await api.files.list()
    assert {f.id for f in files.data} == {upload.id, done.output_file_id}
    assert {f.purpose for f in files.data} == {"batch", "batch_output"}
    assert [b.id for b in (await api.batches.list()).data] == [batch.id]
    assert (await api.files.retrieve(upload.id)).filename == "questions.jsonl"
    deleted = await api.files.delete(upload.id)
    assert deleted.deleted and upload.id not in {f.id for f in (await api.files.list()).data}


async def test_embeddings_and_rerank_batches(fleet):
    a = FakeNeuron("a")
    a.preload("embedder")
    a.preload("ranker")
    models = [entry("embedder", 600, task="embed"), entry("ranker", 600, task="rerank")]
    client, _ = await fleet([a], models=models, auth=KEYS)
    api = sdk(client)
    embed = b"".join(
        json.dumps(
            {
                "custom_id": f"e{i}",
                "method": "POST",
                "url": "/v1/embeddings",
                "body": {"model": "embedder", "input": "x"},
            }
        ).encode()
        + b"\n"
        for i in range(3)
    )
    rerank = json.dumps(
        {
            "custom_id": "r0",
            "method": "POST",
            "url": "/v1/rerank",
            "body": {
                "model": "ranker",
                "query": "capital of France",
                "documents": ["dogs bark", "Paris is the capital"],
            },
        }
    ).encode()
    for data, endpoint in ((embed, "/v1/embeddings"), (rerank, "/v1/rerank")):
        upload = await api.files.create(file=("in.jsonl", data), purpose="batch")
        batch = await api.batches.create(input_file_id=upload.id, endpoint=endpoint, completion_window="24h")
        done = await until_status(api, batch.id, ("completed",))
        output = jsonl((await api.files.content(done.output_file_id)).read())
        assert all(o["response"]["status_code"] == 200 for o in output) and done.request_counts.failed == 0
        if endpoint == "/v1/rerank":
            assert [r["index"] for r in output[0]["response"]["body"]["results"]] == [1, 0]
        else:
            assert len(output) == 3 and output[0]["response"]["body"]["data"][0]["embedding"] == [1.0]


async def test_a_line_that_fails_goes_to_the_error_file(fleet):
    client, _ = await chat_fleet(fleet)
    api = sdk(client)
    bad = json.dumps(
        {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "chat", "messages": 3}}
    ).encode()
    upload = await api.files.create(file=("in.jsonl", lines(2) + bad + b"\n"), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await until_status(api, batch.id, ("completed",))
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    errors = jsonl((await api.files.content(done.error_file_id)).read())
    assert [e["custom_id"] for e in errors] == ["bad"]
    answer = errors[0]["response"]
    assert answer["status_code"] == 400 and answer["body"]["error"]["param"] == "messages"
    assert len(jsonl((await api.files.content(done.output_file_id)).read())) == 2


@pytest.mark.parametrize(
    ("content", "code", "line"),
    [
        (b"{not json\n", "invalid_json_line", 1),
        (lines(2)[: lines(1).index(b"\n") + 1] * 2, "duplicate_custom_id", 2),
        (lines(1, url="/v1/completions"), "mismatched_url", 1),
        (lines(1) + lines(1, model="other").replace(b"req-0", b"req-1"), "mismatched_model", 2),
        (lines(1, stream=True), "stream_unsupported", 1),
        (lines(1, model="nowhere"), "model_not_found", 1),
        (b"\n\n", "empty_file", None),
        (
            b'{"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {"model": "chat"}}\n',
            "invalid_method",
            1,
        ),
        (b'{"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": []}\n', "invalid_body", 1),
        (b'{"custom_id": 5}\n', "invalid_request", 1),
    ],
)
async def test_a_bad_input_file_fails_the_batch_naming_the_line(fleet, content, code, line):
    client, neuron = await chat_fleet(fleet)
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.status == "failed" and batch.failed_at and batch.request_counts.total == 0
    assert batch.errors.data[0].code == code and batch.errors.data[0].line == line, batch.errors
    assert neuron.served == []


async def test_a_model_started_for_another_task_fails_the_batch(fleet):
    client, _ = await chat_fleet(fleet)
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(1, url="/v1/embeddings")), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    assert batch.status == "failed" and batch.errors.data[0].code == "model_cannot_serve_endpoint"


async def test_cancel_keeps_what_ran(fleet):
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.3
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(20)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until_completed(api, batch.id, 2)
    cancelling = await api.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = await until_status(api, batch.id, ("cancelled",))
    ran = done.request_counts.completed
    assert 2 <= ran < 20 and done.cancelled_at and done.request_counts.failed == 0
    output = jsonl((await api.files.content(done.output_file_id)).read())
    assert len(output) == ran and len({o["custom_id"] for o in output}) == ran
    assert len(neuron.served) == ran  # the line running at the cancel ended; none started after it
    with pytest.raises(openai.ConflictError):
        await api.batches.cancel(batch.id)


async def test_an_expired_batch_lists_what_never_ran(fleet):
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.2
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(30)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="1h")
    await until_completed(api, batch.id, 1)
    database = client.app[batch_store_key].directory / "batches.sqlite"
    with sqlite3.connect(database) as db:  # the hour is over
        db.execute("UPDATE batches SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, batch.id))
    done = await until_status(api, batch.id, ("expired",))
    assert done.expired_at and done.request_counts.completed < 30
    errors = jsonl((await api.files.content(done.error_file_id)).read())
    assert len(errors) == 30 - done.request_counts.completed
    assert all(e["response"] is None and e["error"]["code"] == "batch_expired" for e in errors)
    exported = generate_latest(client.app[registry_key]).decode()
    assert 'helexa_gateway_batches_total{status="expired"} 1.0' in exported
    assert f'helexa_gateway_batch_lines_total{{model="chat",result="expired"}} {float(len(errors))}' in exported


async def test_files_and_batches_belong_to_their_key(fleet):
    client, _ = await chat_fleet(fleet)
    alice, bob = sdk(client), sdk(client, OTHER)
    upload = await alice.files.create(file=("in.jsonl", lines(1)), purpose="batch")
    batch = await alice.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        bob.files.retrieve(upload.id),
        bob.files.content(upload.id),
        bob.files.delete(upload.id),
        bob.batches.retrieve(batch.id),
        bob.batches.cancel(batch.id),
        bob.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert (await bob.files.list()).data == [] and (await bob.batches.list()).data == []
    # the operator sees everyone's, with the owner
    await until_status(alice, batch.id, ("completed",))
    resp = await client.get("/admin/batches", headers={"Authorization": f"Bearer {OPS}"})
    listed = (await resp.json())["data"]
    assert resp.status == 200 and [(b["id"], b["owner"]) for b in listed] == [(batch.id, "alice")]
    resp = await client.get("/admin/batches", headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 403


async def test_lines_yield_to_interactive_requests(fleet):
    """With one line per replica: never two lines at once, and no line starts while an interactive request is
    being served — it waits behind at most the one line that was running."""
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.15
    starts = neuron.chat_starts
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(8)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until(lambda: starts, 10, "a line reached the engine")
    # an interactive request that takes a while (0.15 s): lines wait while it runs
    began = time.monotonic()
    answer = await api.chat.completions.create(model="chat", messages=[{"role": "user", "content": "question live"}])
    ended = time.monotonic()
    assert answer.choices[0].message.content == neuron.reply
    await until_status(api, batch.id, ("completed",))
    line_starts = [t for t, body in starts if b"question live" not in body]
    assert not any(began + 0.01 < t < ended - 0.01 for t in line_starts), (began, ended, line_starts)
    gaps = [b - a for a, b in itertools.pairwise(line_starts)]
    assert min(gaps) >= 0.14, gaps  # one at a time: each began after the one before ended


async def test_a_keys_token_limit_holds_lines_back(fleet):
    keys = {"keys": [{"name": "alice", "key": KEY, "tokens_per_hour": 100}]}
    client, neuron = await chat_fleet(fleet, auth=keys)
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(6, max_tokens=20)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await asyncio.sleep(1.0)
    held = await api.batches.retrieve(batch.id)
    # a line reserves 50 tokens (a token per 4 bytes of its 120-byte body, and max_tokens) and uses 12: five
    # fit in the hour's 100 (the fifth starts at 48 used), the sixth waits for the hour — it does not fail
    assert held.status == "in_progress" and held.request_counts.completed == 5 and held.request_counts.failed == 0
    assert len(neuron.served) == 5 and held.usage.total_tokens == 60


async def test_a_restart_in_the_middle_runs_each_line_once(aiohttp_client, aiohttp_server, version, tmp_path):
    neuron = FakeNeuron("a")
    neuron.preload("chat")
    neuron.slow_marker, neuron.slow_seconds = "question", 0.1
    server = await aiohttp_server(neuron.app())
    cfg = make_config(
        neurons=[{"name": "a", "endpoint": str(server.make_url("")).rstrip("/"), "token": "t"}],
        models=[entry("chat", 600)],
        gateway={"poll_interval_seconds": 0.05},
        auth=KEYS,
        batches={"directory": str(tmp_path / "batches")},
    )
    first = await aiohttp_client(make_gateway_app(cfg, version))
    await wait_healthy(first, 1)
    api = sdk(first)
    upload = await api.files.create(file=("in.jsonl", lines(12)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    await until_completed(api, batch.id, 3)
    await first.close()  # the gateway stops with a line running: not stored
    second = await aiohttp_client(make_gateway_app(cfg, version))
    await wait_healthy(second, 1)
    api = sdk(second)
    done = await until_status(api, batch.id, ("completed",))
    assert (done.request_counts.completed, done.request_counts.failed) == (12, 0)
    output = jsonl((await api.files.content(done.output_file_id)).read())
    assert sorted(o["custom_id"] for o in output) == sorted(f"req-{i}" for i in range(12))


async def test_bad_requests_get_clear_errors(fleet):
    client, _ = await chat_fleet(fleet, batches={"max_file_mb": 1})
    auth = {"Authorization": f"Bearer {KEY}"}
    api = sdk(client)

    async def form(data: bytes, purpose: str = "batch", **headers):
        body = aiohttp.FormData()
        body.add_field("purpose", purpose)
        body.add_field("file", data, filename="../../etc/x.jsonl", content_type="application/octet-stream")
        resp = await client.post("/v1/files", data=body, headers={**auth, **headers})
        return resp.status, await resp.json()

    status, body = await form(b"x" * (1024 * 1024 + 10))
    assert status == 413 and "max_file_mb" in body["error"]["message"]
    status, body = await form(lines(1), purpose="fine-tune")
    assert status == 400 and body["error"]["param"] == "purpose"
    status, body = await form(b"")
    assert status == 400 and "empty" in body["error"]["message"]
    status, body = await form(lines(1))
    assert status == 200 and "/" not in body["filename"] and body["filename"].endswith("x.jsonl")  # data, no path
    # a web page cannot upload (its marks), and JSON is not an upload
    status, refused = await form(lines(1), Origin="https://evil.example")
    assert status == 403 and refused["error"]["code"] == "cross_site_refused"
    resp = await client.post("/v1/files", json={"purpose": "batch"}, headers=auth)
    assert resp.status == 400 and "multipart" in (await resp.json())["error"]["message"]
    # nothing was kept of the refused uploads
    files_dir = client.app[batch_store_key].files_dir
    assert [p.name for p in files_dir.iterdir()] == [body["id"]]
    for path, want in (
        ("/v1/files/file-nope", 404),
        ("/v1/files/../../etc/passwd", 404),
        ("/v1/files?limit=0", 400),
        ("/v1/files?order=sideways", 400),
        ("/v1/files?after=%00", 400),
        ("/v1/batches/batch_0123456789abcdef01234567", 404),
        ("/v1/batches?limit=1000", 400),
    ):
        resp = await client.get(path, headers=auth)
        assert resp.status == want, (path, await resp.text())
        assert (await resp.json())["error"]["message"]
    for body, param in (
        ({"input_file_id": "file-x", "endpoint": "/v1/images/generations", "completion_window": "24h"}, "endpoint"),
        (
            {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "2d"},
            "completion_window",
        ),
        (
            {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "completion_window": "999h"},
            "completion_window",
        ),
        (
            {
                "input_file_id": "file-x",
                "endpoint": "/v1/chat/completions",
                "metadata": {str(i): "v" for i in range(17)},
            },
            "metadata",
        ),
        ({"endpoint": "/v1/chat/completions"}, "input_file_id"),
        ({"input_file_id": "file-000000000000000000000000", "endpoint": "/v1/chat/completions"}, "input_file_id"),
    ):
        resp = await client.post("/v1/batches", json=body, headers=auth)
        error = (await resp.json())["error"]
        assert resp.status in (400, 404) and error["param"] == param, (body, error)
    with pytest.raises(openai.NotFoundError):
        await api.batches.cancel("batch_nope")
    # the gateway still serves
    assert (await api.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])).choices


async def test_the_cli_lists_and_cancels_every_keys_batches(fleet):
    client, neuron = await chat_fleet(fleet)
    neuron.slow_marker, neuron.slow_seconds = "question", 0.2
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(20)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    base = str(client.make_url("")).rstrip("/")

    def run(*args: str, key: str = OPS):
        return CliRunner().invoke(cli, ["batches", *args, "--url", base, "--api-key", key], catch_exceptions=False)

    listed = await asyncio.to_thread(run, "list")
    assert listed.exit_code == 0, listed.output
    assert batch.id in listed.output and "alice" in listed.output and "in_progress" in listed.output
    as_json = await asyncio.to_thread(run, "list", "--json")
    assert json.loads(as_json.output)["data"][0]["owner"] == "alice"
    refused = await asyncio.to_thread(run, "list", key=KEY)
    assert refused.exit_code == 1 and "admin scope" in refused.output
    cancelled = await asyncio.to_thread(run, "cancel", batch.id)
    assert cancelled.exit_code == 0 and f"{batch.id}: cancelling" in cancelled.output, cancelled.output
    missing = await asyncio.to_thread(run, "cancel", "batch_nope")
    assert missing.exit_code == 1 and "no such batch" in missing.output


async def test_files_expire(fleet, monkeypatch):
    monkeypatch.setattr(batch_runner, "SWEEP_S", 0.05)
    client, _ = await chat_fleet(fleet)
    api = sdk(client)
    asked = await api.files.create(
        file=("in.jsonl", lines(2)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 3600}
    )
    assert asked.expires_at == asked.created_at + 3600
    kept = await api.files.create(file=("in.jsonl", lines(2)), purpose="batch")
    assert kept.expires_at == kept.created_at + 30 * 86400  # [batches] keep_files_days, OpenAI's 30 by default
    batch = await api.batches.create(
        input_file_id=asked.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        output_expires_after={"anchor": "created_at", "seconds": 7200},
    )
    done = await until_status(api, batch.id, ("completed",))
    output = await api.files.retrieve(done.output_file_id)
    assert output.expires_at == output.created_at + 7200
    # bad expiries are refused, naming the field
    for expires in ({"anchor": "last_active_at", "seconds": 3600}, {"anchor": "created_at", "seconds": 10}):
        with pytest.raises(openai.BadRequestError) as refused:
            await api.files.create(file=("in.jsonl", lines(1)), purpose="batch", expires_after=expires)
        assert refused.value.body["param"] == "expires_after", refused.value.body
    with pytest.raises(openai.BadRequestError) as refused:
        await api.batches.create(
            input_file_id=kept.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": 99_999_999},
        )
    assert refused.value.body["param"] == "output_expires_after"
    # an hour later: gone for the API at once, and from the disk at the runner's next sweep
    store = client.app[batch_store_key]
    with sqlite3.connect(store.directory / "batches.sqlite") as db:
        db.execute("UPDATE files SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, asked.id))
    for call in (api.files.retrieve(asked.id), api.files.content(asked.id)):
        with pytest.raises(openai.NotFoundError):
            await call
    await until(lambda: not store.file_path(asked.id).exists(), 10, "the expired file was deleted")
    assert {f.id for f in (await api.files.list()).data} == {kept.id, done.output_file_id}
    assert store.file_path(kept.id).exists()


async def test_keep_files_days_zero_keeps_them(fleet):
    client, _ = await chat_fleet(fleet, batches={"keep_files_days": 0})
    upload = await sdk(client).files.create(file=("in.jsonl", lines(1)), purpose="batch")
    assert upload.expires_at is None


async def test_a_database_of_the_first_release_is_brought_up_to_date(fleet, tmp_path):
    """A batch directory written before files expired: its files are kept until deleted, new ones expire."""
    directory = tmp_path / "old"
    (directory / "files").mkdir(parents=True)
    (directory / "files" / "file-000000000000000000000001").write_bytes(lines(1))
    with sqlite3.connect(directory / "batches.sqlite") as db:
        db.executescript(
            "CREATE TABLE files (id TEXT PRIMARY KEY, owner TEXT NOT NULL, purpose TEXT NOT NULL,"
            " filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL);"
            "CREATE TABLE batches (id TEXT PRIMARY KEY, owner TEXT NOT NULL, created_at INTEGER NOT NULL,"
            " status TEXT NOT NULL, endpoint TEXT NOT NULL, input_file_id TEXT NOT NULL,"
            " completion_window TEXT NOT NULL, model TEXT, metadata TEXT, errors TEXT, output_file_id TEXT,"
            " error_file_id TEXT, total INTEGER NOT NULL DEFAULT 0, completed INTEGER NOT NULL DEFAULT 0,"
            " failed INTEGER NOT NULL DEFAULT 0, input_tokens INTEGER NOT NULL DEFAULT 0,"
            " output_tokens INTEGER NOT NULL DEFAULT 0, expires_at INTEGER, in_progress_at INTEGER,"
            " finalizing_at INTEGER, completed_at INTEGER, failed_at INTEGER, expired_at INTEGER,"
            " cancelling_at INTEGER, cancelled_at INTEGER);"
        )
        db.execute(
            "INSERT INTO files VALUES ('file-000000000000000000000001', 'alice', 'batch', 'old.jsonl', ?, 1)",
            (len(lines(1)),),
        )
    client, _ = await chat_fleet(fleet, batches={"directory": str(directory)})
    api = sdk(client)
    old = await api.files.retrieve("file-000000000000000000000001")
    assert old.filename == "old.jsonl" and old.expires_at is None
    batch = await api.batches.create(input_file_id=old.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await until_status(api, batch.id, ("completed",))
    assert done.request_counts.completed == 1
    assert (await api.files.retrieve(done.output_file_id)).expires_at is not None


async def test_a_responses_batch(fleet):
    """``/v1/responses`` lines run as the route answers them: translated to the engine's chat and back."""
    client, neuron = await chat_fleet(fleet)
    api = sdk(client)
    rows = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/responses", "body": {"model": "chat", "input": f"q {i}"}}
        for i in range(3)
    ]
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/responses", "body": {"model": "chat", "input": 5}}
    content = b"".join(json.dumps(r).encode() + b"\n" for r in [*rows, bad])
    upload = await api.files.create(file=("in.jsonl", content), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/responses", completion_window="24h")
    done = await until_status(api, batch.id, ("completed",))
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    assert done.usage.output_tokens == 3 * len(neuron.reply.split())
    output = jsonl((await api.files.content(done.output_file_id)).read())
    assert [o["custom_id"] for o in output] == ["r0", "r1", "r2"]
    for o in output:
        body = o["response"]["body"]
        assert body["object"] == "response" and body["status"] == "completed", body
        assert body["output"][-1]["content"][0]["text"] == neuron.reply
    errors = jsonl((await api.files.content(done.error_file_id)).read())
    assert errors[0]["custom_id"] == "bad" and errors[0]["response"]["status_code"] == 400
    assert errors[0]["response"]["body"]["error"]["param"] == "input"


async def test_a_bug_on_one_line_fails_that_line_once(fleet, monkeypatch, caplog):
    client, _ = await chat_fleet(fleet)
    real, calls = batch_runner.execute, []

    async def buggy(call, endpoint, raw):
        calls.append(raw)
        if b"question 1" in raw:
            raise RuntimeError("a bug")
        return await real(call, endpoint, raw)

    monkeypatch.setattr(batch_runner, "execute", buggy)
    api = sdk(client)
    upload = await api.files.create(file=("in.jsonl", lines(3)), purpose="batch")
    batch = await api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await until_status(api, batch.id, ("completed",))
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    errors = jsonl((await api.files.content(done.error_file_id)).read())
    assert errors[0]["custom_id"] == "req-1" and errors[0]["response"]["status_code"] == 500
    assert "request id" in errors[0]["response"]["body"]["error"]["message"]
    assert sum(b"question 1" in raw for raw in calls) == 1  # asked once, not again and again
    assert "RuntimeError: a bug" in caplog.text
