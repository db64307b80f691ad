"""One model over two neurons for real: a gateway, two ``helexa run --role neuron`` processes on loopback, vLLM's
CPU build running the tiny Llama (2 layers, one per rank) with ``hosts = 2`` — vLLM's own multi-node runtime
(``--nnodes 2``, ``mp`` backend, pipeline parallel), placed, started and supervised by helexa.

The first request loads the gang and is answered through both ranks, streamed and not; killing the follower's
engine, then the follower's neuron, fails the whole gang within 15 s (no engine left, no hang), and the next
request loads it again. Marker ``vllm`` (``.ci/run`` runs it).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import aiohttp
import openai
import pytest
import tomli_w

from helexa.bench.runner import Plan, run_once
from helexa.bench.store import Store
from helexa.gateway.app import make_gateway_app
from helexa.gateway.state import lifecycle_key
from tests.conftest import alive, descendants, engine_ports, free_port, make_config, until, wait_http

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(1800)]
MODEL = "tiny-llama"
SOLO = "tiny-llama-solo"  # the same model on one host, for the bench's comparison
OPTIONS = {"dtype": "float32", "max_model_len": 512, "cpu_kv_cache_gib": 1}


def ranks_running(master_port: int) -> dict[int, int]:
    """``{node rank: pid}`` of the vLLM rank processes of the gang on ``master_port`` (scanning /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        ours = state != "Z" and "helexa_vllm.launch" in argv and "--master-port" in argv
        if ours and argv[argv.index("--master-port") + 1] == str(master_port):
            found[int(argv[argv.index("--node-rank") + 1])] = int(entry.name)
    return found


async def test_a_model_over_two_neurons_on_vllms_multi_node_runtime(
    tiny_llama,
    helexa_process,
    aiohttp_server,
    version,
    tmp_path,
):
    neurons = {}

    def start_neuron(name: str, port: int) -> None:
        config = tmp_path / f"{name}.toml"
        config.write_text(
            tomli_w.dumps(
                {
                    "neuron": {
                        "listen": f"127.0.0.1:{port}",
                        "token": f"token-{name}",
                        "state_dir": str(tmp_path / name),
                        "model_dirs": [str(tiny_llama.parent)],
                        "port_range": engine_ports(),
                        "rank_port_range": engine_ports(),
                        "ready_timeout_seconds": 600,
                        "stop_timeout_seconds": 10,
                        "demo": False,
                        "multi_host": True,
                        "advertise_address": "127.0.0.1",
                        "gang_peers": ["127.0.0.1"],
                    },
                    "models": [
                        {"id": MODEL, "harness": "vllm", "source": tiny_llama.name, "hosts": 2, "options": OPTIONS},
                        {"id": SOLO, "harness": "vllm", "source": tiny_llama.name, "options": OPTIONS},
                    ],
                }
            )
        )
        neurons[name] = helexa_process("run", "--role", "neuron", "--config", str(config))
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60)

    ports = {"n1": free_port(), "n2": free_port()}
    for name, port in ports.items():
        start_neuron(name, port)
    cfg = make_config(
        neurons=[
            {"name": name, "endpoint": f"http://127.0.0.1:{port}", "token": f"token-{name}"}
            for name, port in ports.items()
        ],
        models=[
            {"id": MODEL, "harness": "vllm", "hosts": 2, "vram_mb": 3000},
            {"id": SOLO, "harness": "vllm", "vram_mb": 1500},
        ],
        gateway={"poll_interval_seconds": 0.5, "neuron_timeout_seconds": 2},
        auth={"api_keys": ["sk-test"], "admin_keys": ["sk-admin"]},
    )
    gateway = await aiohttp_server(make_gateway_app(cfg, version))
    url = str(gateway.make_url("")).rstrip("/")
    lifecycle = gateway.app[lifecycle_key]
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0, timeout=900)

    async def ask(text: str) -> str:
        reply = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=6, temperature=0
        )
        assert reply.usage.completion_tokens > 0
        return reply.choices[0].message.content or ""

    def gang_processes(master_port: int) -> set[int]:
        """Every process of the gang: the ranks' guards (their parents), the ranks, vLLM's EngineCore and
        workers."""
        guards = {
            int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            for pid in ranks_running(master_port).values()
        }
        return guards.union(*(descendants(guard) for guard in guards))

    def none_alive(pids: set[int]) -> bool:
        return not any(alive(p) for p in pids)

    def logs() -> str:
        return "\n".join(f"--- {n}\n{helexa_process.output(p)[-6000:]}" for n, p in neurons.items())

    try:
        # 1. the first request loads the gang; answered through both ranks, streamed and not
        await ask("hi")
        stream = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=6, temperature=0, stream=True
        )
        assert sum(1 for c in [c async for c in stream] if c.choices and c.choices[0].delta.content) >= 2
        async with aiohttp.ClientSession() as session:
            ranks = {}
            for name, port in ports.items():
                headers = {"Authorization": f"Bearer token-{name}"}
                async with session.get(f"http://127.0.0.1:{port}/models", headers=headers) as resp:
                    info = next(m for m in (await resp.json())["models"] if m["id"] == MODEL)
                assert info["status"] == "loaded" and info["rank"] is not None, info
                ranks[info["rank"]["rank"]] = name
            assert set(ranks) == {0, 1}
            async with session.get(f"{url}/fleet", headers={"Authorization": "Bearer sk-test"}) as resp:
                card = next(m for m in (await resp.json())["models"] if m["id"] == MODEL)
        assert [(m["neuron"], m["rank"]) for m in card["members"]] == [(ranks[0], 0), (ranks[1], 1)]
        master = lifecycle.registry.gangs(MODEL)[0].members[0].rank.master_port
        assert set(ranks_running(master)) == {0, 1}

        # 2. SIGKILL the follower's engine: the head is stopped within 15 s, nothing hangs, a new request loads;
        # nothing of the gang is left (vLLM's workers outlive a killed parent)
        spawned = gang_processes(master)
        assert len(spawned) > 4, spawned  # per rank: the guard, the rank, vLLM's own processes
        os.kill(ranks_running(master)[1], signal.SIGKILL)
        took = await until(lambda: not ranks_running(master), 15, "every rank of the broken gang stopped")
        print(f"follower engine killed: gang stopped in {took:.1f}s")
        took = await until(lambda: none_alive(spawned), 15, "no process of the broken gang left")
        print(f"... and every process of it in {took:.1f}s")
        assert not lifecycle.registry.replicas(MODEL)
        await ask("again")
        gang = lifecycle.registry.gangs(MODEL)[0]
        master = gang.members[0].rank.master_port
        assert set(ranks_running(master)) == {0, 1}

        # 3. SIGKILL the follower's neuron itself: the same; the next request fails at once (one neuron left)
        follower = gang.members[1].neuron.name
        spawned = gang_processes(master)
        neurons[follower].send_signal(signal.SIGKILL)
        neurons[follower].wait(timeout=10)
        took = await until(lambda: not ranks_running(master), 15, "every rank stopped after the neuron died")
        print(f"follower neuron killed: gang stopped in {took:.1f}s")
        took = await until(lambda: none_alive(spawned), 15, "no process of the gang left after the neuron died")
        print(f"... and every process of it in {took:.1f}s")
        began = time.monotonic()
        with pytest.raises(openai.APIStatusError) as refused:
            await ask("anyone?")
        assert refused.value.status_code == 503 and time.monotonic() - began < 15
        start_neuron(follower, ports[follower])  # the host comes back
        await until(lambda: lifecycle.registry.neurons[follower].healthy, 30, "the neuron is polled healthy")
        await ask("back")
        master = lifecycle.registry.gangs(MODEL)[0].members[0].rank.master_port
        assert set(ranks_running(master)) == {0, 1}

        # 4. helexa bench: the gang's cold load (every rank up to the first token) beside a single-host one
        store = Store(tmp_path / "bench.sqlite")
        plan = Plan(models=[MODEL, SOLO], scenarios=["swap"], repeat=1, quick=True)
        assert await run_once(url, store, plan, api_key="sk-test", admin_key="sk-admin") == 2
        rows = {r["model"]: r for r in store.rows()}
        assert rows[MODEL]["ok"] and rows[SOLO]["ok"], rows
        assert "cold load of a gang over 2 neurons" in str(rows[MODEL]["detail"])
        print(
            f"bench: gang cold load {rows[MODEL]['swap_seconds']:.1f}s, single host {rows[SOLO]['swap_seconds']:.1f}s"
        )
        master = lifecycle.registry.gangs(MODEL)[0].members[0].rank.master_port

        # 5. unload frees both
        spawned = gang_processes(master)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/admin/models/{MODEL}/unload", headers={"Authorization": "Bearer sk-admin"}) as resp,
        ):
            assert resp.status == 200, await resp.text()
        await until(lambda: not ranks_running(master), 30, "unload stopped both ranks")
        await until(lambda: none_alive(spawned), 30, "unload left no process of the gang")

        # 6. both neurons killed with what they still run (the single-host model of the bench): nothing is left
        below = set().union(*(descendants(p.pid) for p in neurons.values()))
        assert below, "the bench's single-host model still runs on a neuron"
        for process in neurons.values():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        took = await until(lambda: none_alive(below), 15, "no process below the killed neurons left")
        print(f"neurons killed: every process below them gone in {took:.1f}s ({len(below)} processes)")
    except BaseException:
        print(logs())
        raise
    finally:
        await sdk.close()
