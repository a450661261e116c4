"""Kubernetes and Slurm renderings: goldens, the real schemas, shell checks, bad input.

Manifests are validated with jsonschema against the Kubeflow CRDs stored in tests/data/k8s
(copied unchanged from kubeflow/trainer) and against Kubernetes' own schemas as the
kubernetes-validate package ships them; unknown fields are refused, as `kubectl apply`'s
strict field validation does. Regenerate goldens after an intended change:
UPDATE_GOLDEN=1 pytest tests/unit/test_cluster.py
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

from runner.core.jobspec.job import JobSpec
from runner.host.render.k8s import render_k8s, to_text
from runner.host.render.slurm import render_slurm
from tests.conftest import ROOT, runner_cli

GOLDEN = ROOT / "tests" / "golden"
SCHEMAS = ROOT / "tests" / "data" / "k8s"
K8S_VERSION = "1.33.0"
BASE = {
    "name": "job",
    "model": {"path": "/models/m"},
    "method": {"type": "lora"},
    "data": {"datasets": [{"path": "/data/d.json"}]},
    "output": {"dir": "/out"},
}
JOBS = {
    # one node, one GPU, model and outputs from the node's disk
    "1node": {"image": "cpu", "resources": {"gpus": 1}},
    # four 8-GPU nodes under ZeRO-3, model, data and outputs on claims
    "4x8-zero3": {"image": "default", "resources": {"gpus": 8, "nodes": 4, "shm": "64g"},
                  "distributed": {"deepspeed": {"zero": 3}, "master_port": 29400},
                  "cluster": {"volumes": {"/models": "models", "/data": "datasets", "/out": "outputs"},
                              "partition": "gpu", "time_limit": "24:00:00"}},
}  # fmt: skip


def spec(**changes) -> JobSpec:
    return JobSpec.model_validate({**BASE, **changes})


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


# --- validation against the real schemas ----------------------------------------------------


def _strict(schema):
    """A CRD schema that refuses unknown fields, as the API server does under strict field
    validation (it would otherwise drop them silently)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@cache
def crd_schema(kind: str, api_version: str) -> dict:
    files = {"TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
             "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
             "PyTorchJob": "kubeflow.org_pytorchjobs.yaml"}  # fmt: skip
    crd = yaml.safe_load((SCHEMAS / files[kind]).read_text(encoding="utf-8"))
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return _strict(entry["schema"]["openAPIV3Schema"])


def errors(obj: dict) -> list[str]:
    """Every schema violation of one manifest: a Kubeflow object against its CRD, and every pod
    it makes, and a core object, against Kubernetes' schemas."""
    import jsonschema
    import kubernetes_validate

    found = []
    if obj["apiVersion"] == "v1":
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            found.append(f"{obj['kind']}: {e.message} at {list(e.path)}")
        return found
    validator = jsonschema.Draft7Validator(crd_schema(obj["kind"], obj["apiVersion"]))
    found += [f"{obj['kind']}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(obj)]
    for pod in pods(obj):
        try:
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            found.append(f"{obj['kind']} pod: {e.message} at {list(e.path)}")
    return found


def pods(obj: dict) -> list[dict]:
    """The pods a manifest describes, as core Pod objects (a TrainJob's: its runtime patch with
    the trainer's image, command and environment, as the controller merges them)."""

    def pod(spec: dict) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}

    if obj["kind"] == "PyTorchJob":
        return [pod(r["template"]["spec"]) for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "ClusterTrainingRuntime":
        return [
            pod(j["template"]["spec"]["template"]["spec"])
            for j in obj["spec"]["template"]["spec"]["replicatedJobs"]
        ]
    spec = copy.deepcopy(obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
                         ["replicatedJobs"][0]["template"]["spec"]["template"]["spec"])  # fmt: skip
    trainer = obj["spec"]["trainer"]
    spec["containers"][0].update(image=trainer["image"], command=trainer["command"], env=trainer["env"],
                                 **({"resources": trainer["resourcesPerNode"]} if "resourcesPerNode" in trainer else {}))  # fmt: skip
    return [pod(spec)]


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["v2", "v1"])
@pytest.mark.parametrize("job", JOBS)
def test_k8s_golden_and_valid(job: str, api: str):
    s = spec(**JOBS[job])
    objects = render_k8s(s, uid=1234, gid=100, launch_id="run1", api=api)
    text = to_text(s, objects, api)
    golden(f"k8s-{job}-{api}.yaml", text)
    assert "&id" not in text  # plain YAML: no anchors and aliases
    docs = list(yaml.safe_load_all(text))
    assert docs == json.loads(json.dumps(objects))  # the text is exactly the objects
    for obj in docs:
        assert errors(obj) == [], obj["kind"]
    kinds = [d["kind"] for d in docs]
    assert kinds == (
        ["ConfigMap", "ClusterTrainingRuntime", "TrainJob"] if api == "v2" else ["ConfigMap", "PyTorchJob"]
    )


def test_the_validation_refuses_what_a_cluster_would():
    """The validator is not a rubber stamp: a misspelled field, a wrong type, a missing name."""
    objects = render_k8s(spec(**JOBS["4x8-zero3"]), 1234, 100, "run1", "v2")
    config_map, runtime, job = json.loads(json.dumps(objects))
    job["spec"]["trainer"]["numNode"] = 4
    assert any("numNode" in e for e in errors(job))
    job = json.loads(json.dumps(objects[2]))
    job["spec"]["trainer"]["numNodes"] = "4"
    assert errors(job)
    job = json.loads(json.dumps(objects[2]))
    del job["spec"]["runtimeRef"]["name"]
    assert errors(job)
    config_map["data"]["spec"] = 3  # ConfigMap data are strings
    assert errors(config_map)
    (v1_map, pytorchjob) = json.loads(json.dumps(render_k8s(spec(**JOBS["1node"]), 1, 1, "r", "v1")))
    pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"][1]["emptyDir"][
        "medium"
    ] = 5
    assert errors(pytorchjob)


def test_k8s_four_nodes_take_rank_and_rendezvous_from_the_controller():
    s = spec(**JOBS["4x8-zero3"])
    (config_map, runtime, job) = render_k8s(s, 1234, 100, "run1", "v2")
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": 8}}
    assert trainer["image"] == "localhost/runner/default:latest"
    assert runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"][0]["imagePullPolicy"] == "Never"  # fmt: skip
    command = trainer["command"]
    assert "--node-rank=$(PET_NODE_RANK)" in command and "--master-addr=$(PET_MASTER_ADDR)" in command
    assert "--nnodes=4" in command and command[-2:] == ["runner.train", "/etc/runner/job.yaml"]
    env = {e["name"]: e["value"] for e in trainer["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["PET_RDZV_ID"] == "run1"
    assert json.loads(config_map["data"]["deepspeed.json"])["zero_optimization"]["stage"] == 3
    assert "job.yaml" in config_map["data"]
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"]["spec"]["template"]["spec"]  # fmt: skip
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"models", "datasets", "outputs"}
    mounts = {m["mountPath"]: m.get("readOnly") for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/models"] is True and mounts["/data"] is True and mounts["/out"] is False
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}} in pod["volumes"]


def test_k8s_registry_prefix_and_host_paths():
    s = spec(**{**JOBS["1node"], "cluster": {"registry": "registry.internal:5000"}})
    (config_map, pytorchjob) = render_k8s(s, 1, 1, "r", "v1")
    container = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.internal:5000/runner/cpu:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    volumes = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    assert {"name": "host-2", "hostPath": {"path": "/out", "type": "DirectoryOrCreate"}} in volumes
    assert "Worker" not in pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert container["command"] == ["python", "-m", "runner.train", "/etc/runner/job.yaml"]  # one process


# --- Slurm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["docker", "enroot", "apptainer"])
@pytest.mark.parametrize("job", JOBS)
def test_slurm_golden_and_shell_checks(job: str, runtime: str, tmp_path: Path):
    changes = copy.deepcopy(JOBS[job])
    changes.setdefault("cluster", {})["container_runtime"] = runtime
    text = render_slurm(spec(**changes), PurePosixPath("/out/job/slurm/job.yaml"), uid=1234, gid=100)
    golden(f"slurm-{job}-{runtime}.sbatch", text)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed here (scripts/provision-docker.sh installs it)")
    checked = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_slurm_four_nodes_rank_from_slurm():
    text = render_slurm(spec(**JOBS["4x8-zero3"]), PurePosixPath("/s/job.yaml"), 1234, 100)
    assert "#SBATCH --nodes=4" in text and "#SBATCH --gpus-per-node=8" in text
    assert '--node-rank="${SLURM_NODEID}"' in text and '--master-addr="${MASTER_ADDR}"' in text
    assert 'PET_RDZV_ID="${SLURM_JOB_ID}"' in text and "--shm-size 64g" in text
    assert "--volume /models/m:/models/m:ro" in text and "--volume /out:/out:rw" in text


# --- bad input: one message naming file, field and fix; exit 2; no traceback ----------------


def _job(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "job.yaml"
    data = {**BASE, "model": {"path": str(ROOT / "tests" / "data" / "models" / "fake")}, "data": {"datasets": [{"path": str(ROOT / "data" / "identity.json")}]},
            "output": {"dir": str(tmp_path / "out")}, **changes}  # fmt: skip
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _refused(result, *needles: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def test_k8s_without_an_image_reference_is_refused(tmp_path: Path):
    job = _job(tmp_path, image="nosuchimage", resources={"gpus": 0})
    result = runner_cli("render", str(job), "--target", "k8s", cwd=tmp_path)
    _refused(result, f"{job}:", " image: ", "runner build nosuchimage", "localhost/runner/NAME:TAG")
    assert result.stdout == ""


def test_k8s_with_all_gpus_and_no_count_is_refused(tmp_path: Path):
    job = _job(tmp_path, image="registry.internal/runner/x:1", resources={"gpus": "all"})
    _refused(runner_cli("render", str(job), "--target", "k8s", cwd=tmp_path), "resources.gpus:", "e.g. 8")


def test_more_nodes_than_the_hostfile_lists_is_refused(tmp_path: Path):
    job = _job(tmp_path, resources={"gpus": 0, "nodes": 3})
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("a\nb\n")
    result = runner_cli("render", str(job), "--target", "hosts", "--hostfile", str(hostfile), cwd=tmp_path)
    _refused(result, f"{job}:", "resources.nodes: is 3 but", "lists 2 host(s)", "set resources.nodes: 2")
    assert not (tmp_path / "out").exists()


def test_an_unknown_container_runtime_is_refused(tmp_path: Path):
    job = _job(tmp_path, resources={"gpus": 0}, cluster={"container_runtime": "podman"})
    result = runner_cli("render", str(job), "--target", "slurm", cwd=tmp_path)
    _refused(result, f"{job}:", "cluster.container_runtime:", "docker, enroot, apptainer", "'podman'")
    assert not (tmp_path / "out").exists()


def test_slurm_cli_writes_the_script_and_the_spec(tmp_path: Path):
    job = _job(tmp_path, image="cpu", resources={"gpus": 0})
    result = runner_cli("render", str(job), "--target", "slurm", "-o", str(tmp_path / "s"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = (tmp_path / "s" / "job.sbatch").read_text()
    assert f"{tmp_path / 's' / 'job.yaml'}:{tmp_path / 's' / 'job.yaml'}:ro" in script
    assert (tmp_path / "s" / "job.yaml").is_file() and "sbatch" in result.stdout


def test_k8s_cli_renders_where_the_cluster_files_are_not(tmp_path: Path):
    """The model and data live on the cluster's volumes: rendering needs none of them here."""
    job = _job(tmp_path, image="registry.internal/runner/x:1", resources={"gpus": 2},
               model={"path": "/models/not-here"}, cluster={"volumes": {"/models": "models"}})  # fmt: skip
    out = tmp_path / "job-k8s.yaml"
    result = runner_cli("render", str(job), "--target", "k8s", "--api", "v1", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PyTorchJob"] and all(errors(d) == [] for d in docs)
    assert f"kubectl apply -f {out}" in result.stdout
