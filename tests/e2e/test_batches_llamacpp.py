"""The Batch APIs on the real demo model (``helexa run --role both``, llama.cpp), driven by the official SDKs:
``openai`` (upload, create, poll, read the output) and ``anthropic`` (a message batch: create, poll, results);
then a gateway SIGKILLed in the middle of a batch and started again on the same directory — the batch completes
and each line is in the output exactly once.
"""

from __future__ import annotations

import json
import signal
import time

import anthropic
import openai
import pytest

from helexa.neuron.demo import DEMO_MODEL_ID
from tests.conftest import engine_ports

pytestmark = pytest.mark.timeout(600)
KEY = "sk-batch"


def batch_file(n: int) -> bytes:
    rows = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": DEMO_MODEL_ID,
                "messages": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                "max_tokens": 8,
                "temperature": 0,
            },
        }
        for i in range(n)
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def wait_for(api: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 300, done: int = 0):
    deadline = time.monotonic() + timeout
    while True:
        batch = api.batches.retrieve(batch_id)
        if batch.status in statuses or (done and batch.request_counts.completed >= done):
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)


def test_batches_on_the_demo_model_and_a_sigkill(demo_fleet, helexa_process):
    url = demo_fleet(api_keys=[KEY], admin_keys=["sk-admin"], port_range=str(engine_ports()))
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)

    # a whole batch, as the SDK's documentation shows it
    upload = api.files.create(file=("questions.jsonl", batch_file(4)), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_for(api, batch.id, ("completed", "failed", "expired", "cancelled"))
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (4, 0)
    output = [json.loads(line) for line in api.files.content(done.output_file_id).read().splitlines()]
    assert [o["custom_id"] for o in output] == ["q0", "q1", "q2", "q3"]
    for o in output:
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and body["choices"][0]["message"]["content"].strip(), body
        assert body["usage"]["completion_tokens"] <= 8
    assert done.usage.output_tokens == sum(o["response"]["body"]["usage"]["completion_tokens"] for o in output)

    # a message batch, as Anthropic's SDK documentation shows it
    claude = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=120)
    params = {"model": DEMO_MODEL_ID, "max_tokens": 8, "temperature": 0}
    message_batch = claude.messages.batches.create(
        requests=[
            {"custom_id": f"m{i}", "params": {**params, "messages": [{"role": "user", "content": f"Say {i}."}]}}
            for i in range(3)
        ]
    )
    deadline = time.monotonic() + 300
    while (ended := claude.messages.batches.retrieve(message_batch.id)).processing_status != "ended":
        assert time.monotonic() < deadline, ended
        time.sleep(0.2)
    assert ended.request_counts.succeeded == 3, ended
    results = {r.custom_id: r.result for r in claude.messages.batches.results(message_batch.id)}
    assert sorted(results) == ["m0", "m1", "m2"]
    for result in results.values():
        assert result.type == "succeeded" and result.message.content[0].text.strip(), result
        assert result.message.usage.output_tokens <= 8 and result.message.stop_reason in ("max_tokens", "end_turn")

    # SIGKILL in the middle of a batch, then the same directory under a new process
    upload = api.files.create(file=("more.jsonl", batch_file(16)), purpose="batch")
    batch = api.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    half = wait_for(api, batch.id, ("completed",), done=3)
    assert half.status == "in_progress", "the batch ended before the kill: make it longer"
    first = helexa_process.started[-1]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    url = demo_fleet(api_keys=[KEY], admin_keys=["sk-admin"], port_range=str(engine_ports()))
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    done = wait_for(api, batch.id, ("completed", "failed", "expired", "cancelled"))
    assert done.status == "completed" and (done.request_counts.completed, done.request_counts.failed) == (16, 0)
    ids = [json.loads(line)["custom_id"] for line in api.files.content(done.output_file_id).read().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(16)), ids  # each exactly once
    assert api.files.retrieve(upload.id).bytes == len(batch_file(16))  # the first process's upload, kept
