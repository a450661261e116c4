"""Golden tests of the rendered launch commands and DeepSpeed configs."""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath

import pytest

from runner.render.deepspeed import render_deepspeed
from runner.render.launch import render_launch
from runner.spec import JobSpec
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
RUN = PurePosixPath("/out/job/RUN")
BASE = {
    "name": "job",
    "model": {"path": "/models/m"},
    "method": {"type": "lora"},
    "data": {"datasets": [{"path": "/data/d.json"}]},
}


def spec(**changes) -> JobSpec:
    data = {**BASE}
    for key, value in changes.items():
        data[key] = value
    return JobSpec.model_validate(data)


LAUNCHES = {
    "cpu": {"resources": {"gpus": 0}},
    "one-gpu": {"resources": {"gpus": [3]}},
    "all-gpus": {"resources": {"gpus": "all"}},
    "cpu-two-procs": {"resources": {"gpus": 0, "procs_per_node": 2}},
    "two-nodes": {"resources": {"gpus": 4, "nodes": 2},
                  "distributed": {"master_addr": "10.0.0.1", "master_port": 29400, "node_rank": 1}},
}  # fmt: skip


def test_launch_commands_golden():
    text = "".join(f"{name}: {json.dumps(render_launch(spec(**c), RUN))}\n" for name, c in LAUNCHES.items())
    golden = GOLDEN / "launch.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
@pytest.mark.parametrize("offload", [False, True])
def test_deepspeed_config_golden(zero: int, offload: bool):
    ds = {"zero": zero, "offload_optimizer": offload, "offload_params": offload and zero == 3}
    config = render_deepspeed(spec(distributed={"deepspeed": ds}))
    text = json.dumps(config, indent=2) + "\n"
    golden = GOLDEN / f"deepspeed-zero{zero}{'-offload' if offload else ''}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert config["zero_optimization"]["stage"] == zero
    assert config["train_micro_batch_size_per_gpu"] == "auto"  # filled from the same TrainingArguments


def test_no_deepspeed_no_config():
    assert render_deepspeed(spec()) is None


def test_deepspeed_config_is_accepted_by_transformers():
    """transformers' own DeepSpeed config class parses it and resolves every "auto"."""
    pytest.importorskip("accelerate")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    for zero in (2, 3):
        config = render_deepspeed(spec(distributed={"deepspeed": {"zero": zero, "offload_optimizer": True}}))
        parsed = HfTrainerDeepSpeedConfig(config)
        assert parsed.get_value("zero_optimization.stage") == zero
        assert parsed.is_zero3() == (zero == 3) and parsed.is_offload()


def test_container_config_golden():
    from runner.render.container import render_container

    job = spec(
        image="cpu",
        resources={"gpus": [0, 1], "shm": "32g"},
        model={"path": "/models/m", "adapter": "/runs/a"},
    )
    config = render_container(job, RUN, uid=1234, gid=100, run_id="RUN")
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / "container.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert config["network_mode"] == "none" and config["user"] == "1234:100"
    writable = {k for k, v in config["volumes"].items() if v["mode"] == "rw"}
    assert writable == {str(RUN), "outputs/.cache"}  # the run and the tokenized-data cache only
    assert {v["mode"] for k, v in config["volumes"].items() if k not in writable} == {"ro"}
    assert config["device_requests"] == [
        {"Driver": "nvidia", "Capabilities": [["gpu"]], "DeviceIDs": ["0", "1"]}
    ]


def test_cpu_job_requests_no_gpu_and_multi_node_uses_host_network():
    from runner.render.container import render_container

    assert render_container(spec(resources={"gpus": 0}), RUN, 1, 1, "R")["device_requests"] == []
    two = spec(resources={"gpus": "all", "nodes": 2})
    config = render_container(two, RUN, 1, 1, "R")
    assert config["network_mode"] == "host" and config["device_requests"][0]["Count"] == -1


def test_compose_golden():
    from runner.render.compose import render_compose

    job = spec(image="cpu", resources={"gpus": 2, "shm": "32g"}, output={"dir": "/out"})
    text = render_compose(job, PurePosixPath("/c/job.yaml"), uid=1234, gid=100)
    golden = GOLDEN / "compose.yml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert "pull_policy: never" in text and "network_mode: none" in text and "count: 2" in text


@pytest.mark.parametrize(
    ("gpus", "names", "nccl", "expected"),
    [
        (2, ["NVIDIA GeForce RTX 4090"] * 2, {}, {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}),
        ("all", ["NVIDIA GeForce RTX 3090"] * 4, {}, {"NCCL_P2P_DISABLE": "1", "NCCL_IB_DISABLE": "1"}),
        (1, ["NVIDIA GeForce RTX 4090"], {}, {}),  # one card: no collective to hang
        (8, ["NVIDIA H100 80GB HBM3"] * 8, {}, {}),  # NVLink: leave NCCL alone
        (2, ["NVIDIA RTX A6000"] * 2, {}, {}),
        (
            2,
            ["NVIDIA GeForce RTX 4090"] * 2,
            {"p2p_disable": False},
            {"NCCL_P2P_DISABLE": "0", "NCCL_IB_DISABLE": "1"},
        ),
        (8, ["NVIDIA H100 80GB HBM3"] * 8, {"ib_disable": True}, {"NCCL_IB_DISABLE": "1"}),
    ],
)
def test_nccl_policy(gpus, names, nccl, expected):
    from runner.render.nccl import nccl_env

    assert nccl_env(spec(resources={"gpus": gpus}, distributed={"nccl": nccl}), names) == expected


def test_deepspeed_always_goes_through_the_launcher():
    job = spec(resources={"gpus": 1}, distributed={"deepspeed": {"zero": 2}})
    assert render_launch(job, RUN)[:3] == ["python", "-m", "torch.distributed.run"]
