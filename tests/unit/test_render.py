"""Golden tests of the rendered launch commands and DeepSpeed configs."""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath

import pytest

from runner.core.deepspeed import render_deepspeed
from runner.core.jobspec.job import JobSpec
from runner.core.launch import render_launch
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
    from runner.host.render.container import render_container

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
    from runner.host.render.container import render_container

    assert render_container(spec(resources={"gpus": 0}), RUN, 1, 1, "R")["device_requests"] == []
    two = spec(resources={"gpus": "all", "nodes": 2})
    config = render_container(two, RUN, 1, 1, "R")
    assert config["network_mode"] == "host" and config["device_requests"][0]["Count"] == -1


def test_compose_golden():
    """A 2-GPU job: torchrun with 2 processes, as submit runs it; gid 50 quoted (YAML 1.1)."""
    from runner.host.render.compose import render_compose

    job = spec(image="cpu", resources={"gpus": 2, "shm": "32g"}, output={"dir": "/out"},
               distributed={"nccl": {"p2p_disable": True}})  # fmt: skip
    text = render_compose(job, PurePosixPath("/c/job.yaml"), uid=1234, gid=50)
    golden = GOLDEN / "compose.yml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    assert "pull_policy: never" in text and "network_mode: none" in text and "count: 2" in text
    assert "image: localhost/runner/cpu:latest" in text
    assert "- --nproc-per-node=2" in text and 'user: "1234:50"' in text
    assert 'NCCL_P2P_DISABLE: "1"' in text and "NCCL_IB_DISABLE" not in text  # auto: decided in the job


def test_hosts_golden():
    """Four 8-GPU hosts under ZeRO-3: one docker run each, node ranks 0-3, node 0 the rendezvous."""
    from runner.host.render.container import render_hosts

    job = spec(image="default", resources={"gpus": "all", "nodes": 4, "procs_per_node": 8},
               distributed={"deepspeed": {"zero": 3}, "master_port": 29400})  # fmt: skip
    text = render_hosts(job, RUN, ["gpu-a", "gpu-b", "gpu-c", "gpu-d"], uid=1234, gid=100, run_id="RUN")
    golden = GOLDEN / "hosts.sh"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")
    commands = [line for line in text.splitlines() if line.startswith("docker run")]
    assert len(commands) == 4
    for rank, command in enumerate(commands):
        assert f"--node-rank={rank}" in command and "--nnodes=4" in command
        assert "--master-addr=gpu-a" in command and "--network host" in command and "--gpus all" in command


def test_every_launch_form_carries_the_spec_nccl_settings(monkeypatch):
    """p2p_disable: true reaches the container, the compose file and the local process."""
    from runner.host.execute.local import LocalExecutor
    from runner.host.render.compose import compose_service
    from runner.host.render.container import render_container

    job = spec(resources={"gpus": 0, "procs_per_node": 2}, distributed={"nccl": {"p2p_disable": True}})
    assert render_container(job, RUN, 1, 1, "R")["environment"]["NCCL_P2P_DISABLE"] == "1"
    assert compose_service(job, PurePosixPath("/c/job.yaml"), 1, 1)["environment"]["NCCL_P2P_DISABLE"] == "1"
    env = LocalExecutor(print).plan(job, RUN).env
    assert env["NCCL_P2P_DISABLE"] == "1" and env["CUDA_VISIBLE_DEVICES"] == ""
    assert "NCCL_IB_DISABLE" not in env  # auto, and no GPUs: nothing to turn off


@pytest.mark.parametrize(("gpus", "visible"), [(0, ""), (1, "0"), (2, "0,1"), ([2, 5], "2,5"), ("all", None)])
def test_the_local_process_sees_the_gpus_the_spec_asks_for(gpus, visible):
    from runner.core.launch import visible_devices

    assert visible_devices(spec(resources={"gpus": gpus})) == visible


def test_more_gpus_than_the_host_has_is_one_message():
    from runner.core.errors import RunError
    from runner.host.execute.gpus import require_gpus

    two = ["NVIDIA GeForce RTX 4090"] * 2
    require_gpus(spec(resources={"gpus": [0, 1]}), two, "this machine")
    with pytest.raises(RunError, match=r"asks for 4 but this machine has 2 GPU\(s\)"):
        require_gpus(spec(resources={"gpus": 4}), two, "this machine")
    with pytest.raises(RunError, match=r"device\(s\) \[3\] but this machine has 2 GPU\(s\) \(ids 0-1\)"):
        require_gpus(spec(resources={"gpus": [0, 3]}), two, "this machine")


def test_deepspeed_on_cpu_uses_its_cpu_backend_and_torchrun_waits_for_a_stop():
    from runner.core.launch import launch_env

    env = launch_env(spec(resources={"gpus": 0}, distributed={"deepspeed": {"zero": 2}}), [])
    assert env["DS_ACCELERATOR"] == "cpu" and env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "3600"
    assert "DS_ACCELERATOR" not in launch_env(spec(distributed={"deepspeed": {"zero": 2}}), ["H100"])


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
    from runner.core.nccl import nccl_env

    assert nccl_env(spec(resources={"gpus": gpus}, distributed={"nccl": nccl}), names) == expected


def test_deepspeed_always_goes_through_the_launcher():
    job = spec(resources={"gpus": 1}, distributed={"deepspeed": {"zero": 2}})
    assert render_launch(job, RUN)[:3] == ["python", "-m", "torch.distributed.run"]


def test_deepspeeds_compiled_ops_go_to_the_shells_cache_or_the_outputs(monkeypatch):
    """A local run uses the TORCH_EXTENSIONS_DIR its shell set (compiled once for every run);
    without one, and in a container, OUTPUT/.cache/torch_extensions."""
    from runner.host.execute.local import LocalExecutor
    from runner.host.render.container import render_container

    job = spec(resources={"gpus": 0, "procs_per_node": 2}, distributed={"deepspeed": {"zero": 2}})
    outputs = f"{job.output.dir}/.cache/torch_extensions"
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert LocalExecutor(print).plan(job, RUN).env["TORCH_EXTENSIONS_DIR"] == outputs
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/home/me/.cache/ops")
    assert "TORCH_EXTENSIONS_DIR" not in LocalExecutor(print).plan(job, RUN).env  # the shell's stays
    assert render_container(job, RUN, 1, 1, "R")["environment"]["TORCH_EXTENSIONS_DIR"] == outputs


def test_ppo_mounts_its_reward_model_run_with_the_base_and_adapter_it_names(tmp_path):
    """An rm run's adapter/ is read with its run's spec.yaml (the base it trained on, the sft
    adapter it merged): the container sees all of them, read-only."""
    from runner.core.launch import read_only_paths
    from runner.host.render.container import render_container

    rm_run = tmp_path / "out" / "rm" / "20261130-000000-abcd"
    (rm_run / "adapter").mkdir(parents=True)
    (rm_run / "adapter" / "adapter_config.json").write_text('{"task_type": "SEQ_CLS"}')
    (rm_run / "spec.yaml").write_text(
        "name: rm\nstage: rm\nmodel:\n  path: /models/rm-base  # set\n  adapter: /out/sft/RUN/adapter\n"
    )
    job = spec(stage="ppo", ppo={"reward_model": str(rm_run / "adapter")})
    assert read_only_paths(job)[-3:] == [str(rm_run), "/models/rm-base", "/out/sft/RUN/adapter"]
    volumes = render_container(job, RUN, 1, 1, "R")["volumes"]
    assert all(volumes[p]["mode"] == "ro" for p in (str(rm_run), "/models/rm-base"))
    whole = tmp_path / "whole-rm"  # a whole reward model: its own directory alone
    whole.mkdir()
    assert read_only_paths(spec(stage="ppo", ppo={"reward_model": str(whole)}))[-1] == str(whole)
