"""Launches that cannot run are refused before anything starts: from the spec alone (the goldens
under tests/data/bad_specs hold the messages), and at submit against the host's GPUs."""

from __future__ import annotations

import pytest

from runner.core.errors import RunError
from runner.core.jobspec.checks import check
from runner.core.jobspec.job import JobSpec
from runner.core.launch import render_launch
from runner.host.execute.gpus import require_gpus
from tests.conftest import ROOT

BASE = {
    "name": "job", "model": {"path": "tests/data/models/fake"}, "method": {"type": "lora"},
    "data": {"datasets": [{"path": "tests/data/datasets/alpaca.json"}]},
}  # fmt: skip


def spec(**changes) -> JobSpec:
    return JobSpec.model_validate({**BASE, **changes})


def found(s: JobSpec, launched_here: bool = True) -> dict[str, str]:
    return {".".join(map(str, loc)): msg for loc, msg in check(s, ROOT, launched_here=launched_here)}


def test_gpus_all_with_more_processes_than_the_host_has_is_refused_at_submit():
    two = ["NVIDIA GeForce RTX 4090"] * 2
    require_gpus(spec(resources={"gpus": "all", "procs_per_node": 2}), two, "this machine")
    with pytest.raises(RunError, match="procs_per_node is 4, but gpus: all gives the job the 2 GPU"):
        require_gpus(spec(resources={"gpus": "all", "procs_per_node": 4}), two, "this machine")


def test_processes_per_node_on_cpu_are_free():
    assert "resources.procs_per_node" not in found(spec(resources={"gpus": 0, "procs_per_node": 4}))
    assert "resources.procs_per_node" in found(spec(resources={"gpus": [2, 3], "procs_per_node": 3}))


def test_multi_node_address_is_required_only_where_runner_starts_the_node():
    """render --target hosts|k8s|slurm give every node its address; validate and submit do not."""
    two = spec(resources={"gpus": 8, "nodes": 2})
    assert "resources.nodes" in found(two, launched_here=True)
    assert "resources.nodes" not in found(two, launched_here=False)
    assert "resources.nodes" not in found(spec(resources={"gpus": 8, "nodes": 2},
                                               distributed={"master_addr": "node0.cluster"}))  # fmt: skip


@pytest.mark.parametrize("addr", ["10.0.0.1", "fe80::1", "gpu-a", "node0.cluster.local", "${MASTER_ADDR}"])
def test_addresses_of_every_form_pass(addr: str):
    assert "distributed.master_addr" not in found(
        spec(resources={"nodes": 2}, distributed={"master_addr": addr})
    )


@pytest.mark.parametrize("addr", ["localhost", "127.0.0.1", "::1", "0.0.0.0"])
def test_addresses_no_other_node_reaches_are_refused_for_several_nodes(addr: str):
    assert (
        "no other machine reaches"
        in found(spec(resources={"nodes": 2}, distributed={"master_addr": addr}))["distributed.master_addr"]
    )
    assert "distributed.master_addr" not in found(spec(distributed={"master_addr": addr}))


def test_one_node_launches_torchrun_itself_several_through_the_bounded_rendezvous():
    one = render_launch(spec(resources={"gpus": 2}), None, spec_file=ROOT / "job.yaml")
    assert one[1:3] == ["-m", "torch.distributed.run"]
    two = spec(resources={"gpus": 2, "nodes": 2},
               distributed={"master_addr": "10.0.0.1", "rendezvous_timeout_s": 120})  # fmt: skip
    argv = render_launch(two, None, spec_file=ROOT / "job.yaml")
    assert argv[1:4] == ["-m", "runner.train", "launch"]
    assert "--master-addr=10.0.0.1" in argv and "--rdzv-conf=timeout=120" in argv


def test_qlora_under_zero3_stores_4bit_weights_in_the_training_dtype(monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
    from runner.train import model
    from runner.train.model import quant_storage

    monkeypatch.setattr(model, "precision", lambda spec: "bf16")  # as on a GPU with bfloat16

    zero3 = {"gpus": 2}, {"deepspeed": {"zero": 3}}
    s = spec(method={"type": "qlora"}, resources=zero3[0], distributed=zero3[1], training={"bf16": True})
    assert str(quant_storage(s)["bnb_4bit_quant_storage"]) == "torch.bfloat16"
    assert quant_storage(spec(method={"type": "qlora"}, resources={"gpus": 2},
                              distributed={"deepspeed": {"zero": 2}})) == {}  # fmt: skip
