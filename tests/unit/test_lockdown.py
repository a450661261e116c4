"""One lockdown policy (runner.host.render.lockdown), the same in every launch form, root never."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from ruamel.yaml import YAML

from runner.core.jobspec.job import JobSpec
from runner.host.render import lockdown
from tests.conftest import ROOT

RUN = PurePosixPath("/out/job/RUN")
SPEC_FILE = PurePosixPath("/c/job.yaml")


def spec(gpus=0, nodes=1, **more) -> JobSpec:
    return JobSpec.model_validate({
        "name": "job", "image": "cpu", "model": {"path": "/models/m"}, "method": {"type": "lora"},
        "data": {"datasets": [{"path": "/data/d.json"}]}, "output": {"dir": "/out"},
        "resources": {"gpus": gpus, "nodes": nodes, **({"procs_per_node": 8} if nodes > 1 else {})},
        **more,
    })  # fmt: skip


def docker_flags(argv: list[str]) -> set[str]:
    return {a for a in argv if a.startswith(("--cap-drop", "--security-opt", "--pids-limit", "--read-only",
                                             "--tmpfs"))}  # fmt: skip


EXPECTED_FLAGS = {"--cap-drop=ALL", "--security-opt=no-new-privileges", f"--pids-limit={lockdown.PIDS_LIMIT}",
                  "--read-only", "--tmpfs=/tmp:rw,exec,nosuid,nodev"}  # fmt: skip


@pytest.mark.parametrize("gpus", [0, 2])
@pytest.mark.parametrize("uid", [0, 1234])
def test_the_container_and_its_docker_run_line(gpus: int, uid: int):
    from runner.host.render.container import docker_run_argv, render_container

    config = render_container(spec(gpus), RUN, uid, 50 if uid else 0, "RUN")
    assert config["cap_drop"] == ["ALL"] and config["security_opt"] == ["no-new-privileges"]
    assert config["read_only"] is True and config["tmpfs"] == {"/tmp": "rw,exec,nosuid,nodev"}
    assert config["pids_limit"] == lockdown.PIDS_LIMIT
    assert config["user"] == ("65534:65534" if uid == 0 else "1234:50")
    # The GPU path: a GPU job keeps its device request and the raised limits NCCL needs; a CPU
    # job gets neither (this engine, nested, cannot raise memlock).
    assert bool(config["device_requests"]) == bool(gpus)
    assert {u["Name"] for u in config["ulimits"]} == ({"memlock", "stack"} if gpus else set())
    argv = docker_run_argv(config)
    assert docker_flags(argv) == EXPECTED_FLAGS
    assert argv[argv.index("--user") + 1] == config["user"]
    # Nothing but the run directory and the data cache is writable.
    assert {p for p, v in config["volumes"].items() if v["mode"] == "rw"} == {str(RUN), "/out/.cache"}


def test_hosts_lines_carry_it_on_every_node():
    from runner.host.render.container import render_hosts

    text = render_hosts(spec(8, nodes=2), RUN, ["a", "b"], 0, 0, "RUN")
    lines = [line.split() for line in text.splitlines() if line.startswith("docker run")]
    assert len(lines) == 2
    for argv in lines:
        assert docker_flags(argv) == EXPECTED_FLAGS and argv[argv.index("--user") + 1] == "65534:65534"


@pytest.mark.parametrize("uid", [0, 1234])
def test_a_rendered_compose_file(uid: int):
    from runner.host.render.compose import render_compose

    service = YAML(typ="safe").load(render_compose(spec(2), SPEC_FILE, uid, 50))["services"]["job"]
    assert {k: service[k] for k in lockdown.compose_keys()} == lockdown.compose_keys()
    assert service["user"] == ("65534:65534" if uid == 0 else "1234:50")
    assert "ulimits" in service and service["deploy"]["resources"]["reservations"]["devices"]


def test_the_top_level_compose_file_is_the_same_policy():
    """docker-compose.yml is written by hand; its lockdown must stay the policy's."""
    train = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())["x-train"]
    assert {k: train[k] for k in lockdown.compose_keys()} == lockdown.compose_keys()


def _containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(pod securityContext, container) of every pod template a job's manifests carry."""
    found = []
    for o in objects:
        if o["kind"] == "PyTorchJob":
            for replica in o["spec"]["pytorchReplicaSpecs"].values():
                pod = replica["template"]["spec"]
                found += [(pod["securityContext"], c) for c in pod["containers"]]
        elif o["kind"] == "TrainJob":
            patch = o["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
            pod = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
            found += [(pod["securityContext"], c) for c in pod["containers"]]
    return found


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize("uid", [0, 1234])
def test_k8s_manifests(api: str, uid: int):
    from runner.host.render.k8s import render_k8s

    found = _containers(
        render_k8s(spec(8, nodes=2, cluster={"host_paths": True}), uid, 50 if uid else 0, "l1", api)
    )
    assert len(found) == (2 if api == "v1" else 1)
    for pod, container in found:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        }  # fmt: skip
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] == (65534 if uid == 0 else 1234)
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_slurm_scripts():
    from runner.host.render.slurm import render_slurm

    docker = render_slurm(spec(8, nodes=2, cluster={"container_runtime": "docker"}), RUN, 0, 0)
    run = docker.split("    docker run \\\n")[1].split(" &\n")[0]  # one option a line
    lines = {line.strip().removesuffix(" \\") for line in run.splitlines()}
    assert lines >= EXPECTED_FLAGS and "--user 65534:65534" in lines
    apptainer = render_slurm(spec(8, nodes=2, cluster={"container_runtime": "apptainer"}), RUN, 0, 0)
    assert "--containall \\\n        --no-privs" in apptainer and "--cleanenv" in apptainer


def test_the_dockerfile_leaves_no_setuid_binary():
    from runner.core.jobspec.load import load_image
    from runner.host.render.dockerfile import render_dockerfile

    text = render_dockerfile(load_image(Path(ROOT / "images" / "cpu.yaml")))
    final = text.split("# --- stage 2")[1]
    assert "find / -xdev -perm /6000 -type f -exec chmod ug-s {} +" in final
    assert final.index("chmod ug-s") < final.index("USER ")
