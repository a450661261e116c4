"""Two nodes as two containers on a private network: torchrun rendezvous, gloo, one adapter."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.execute.runs import read_record
from runner.execute.submit import prepare
from runner.render.container import render_container
from tests.conftest import write_job

pytestmark = pytest.mark.docker


def test_two_nodes_rendezvous_and_save_one_adapter(docker, cpu_image, tiny_model: Path, tmp_path: Path):
    spec_file = write_job(tmp_path / "job.yaml", tiny_model, name="twonode", image="cpu",
                          training={"max_steps": 4, "per_device_train_batch_size": 2},
                          resources={"nodes": 2, "procs_per_node": 1},
                          distributed={"master_addr": "node0", "master_port": 29555})  # fmt: skip
    record, spec = prepare(spec_file)
    net = docker.client.networks.create(f"runner-test-{os.getpid()}", driver="bridge", internal=True)
    containers = []
    try:
        for rank in (0, 1):
            node = spec.model_copy(deep=True)
            node.distributed.node_rank = rank
            config = render_container(
                node, Path(record.run_dir), os.getuid(), os.getgid(), f"{record.id}-n{rank}"
            )
            assert f"--node-rank={rank}" in config["command"] and "--nnodes=2" in config["command"]
            # Real nodes use the host network; here each node is a container on a private one.
            config.update(network_mode=net.name, hostname=f"node{rank}")
            containers.append(docker.start(config))
        codes = [c.wait(timeout=300)["StatusCode"] for c in containers]
        logs = [c.logs().decode(errors="replace") for c in containers]
    finally:
        for c in containers:
            c.remove(force=True)
        net.remove()
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    results = json.loads((Path(record.run_dir) / "results.json").read_text())
    assert results["world_size"] == 2 and results["global_step"] == 4
    assert (Path(record.run_dir) / "adapter" / "adapter_model.safetensors").is_file()
    assert read_record(record.run_dir).id == record.id
