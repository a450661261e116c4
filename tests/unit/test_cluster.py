"""Kubernetes and Slurm renderings: goldens, the real schemas, shell checks, bad input.

Manifests are validated with jsonschema against the Kubeflow CRDs stored in tests/data/k8s
(copied unchanged from kubeflow/trainer) and against Kubernetes' own schemas as the
kubernetes-validate package ships them; unknown fields are refused, as `kubectl apply`'s
strict field validation does. The CRDs' CEL rules (x-kubernetes-validations), which jsonschema
does not read, are evaluated with cel-python where it is installed, and otherwise those of
them that are a regular expression or a size bound (the name rules). The batch scripts run
under bash with stand-ins for Slurm's and Docker's commands here; tests/docker/test_slurm.py
runs them on a real cluster. Regenerate goldens after an intended change:
UPDATE_GOLDEN=1 pytest tests/unit/test_cluster.py
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import time
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
import yaml

from runner.core.jobspec.job import K8S_NAME_MAX, JobSpec, k8s_safe_name
from runner.host.render.k8s import ClusterInputError, render_k8s, to_text
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
RUN_DIR = PurePosixPath("/out/job/20250101-000000-abcd")
JOBS = {
    # one node, one GPU, model and outputs from the node's disk (on request: hostPath), a
    # namespaced training runtime (the default: no cluster-admin needed to apply it)
    "1node": {"image": "cpu", "resources": {"gpus": 1}, "cluster": {"host_paths": True}},
    # four 8-GPU nodes under ZeRO-3, model, data and outputs on claims, a cluster-wide runtime
    "4x8-zero3": {"image": "default", "resources": {"gpus": 8, "nodes": 4, "shm": "64g"},
                  "distributed": {"deepspeed": {"zero": 3}, "master_port": 29400},
                  "cluster": {"volumes": {"/models": "models", "/data": "datasets", "/out": "outputs"},
                              "k8s_runtime": "cluster", "partition": "gpu", "time_limit": "24:00:00"}},
    # two CPU nodes shared with other jobs (CPUs and memory asked for), a name a TrainJob refuses
    "2x-shared": {"name": "2-sft", "image": "cpu", "resources": {"gpus": 0, "nodes": 2},
                  "cluster": {"volumes": {"/models": "models", "/data": "datasets", "/out": "outputs"}, "cpus_per_node": 8, "memory_per_node": "32G",
                              "time_limit": "2:00:00", "stop_before_limit": 600}},
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
    (entry,) = [
        v for v in crd(kind, api_version)["spec"]["versions"] if v["name"] == api_version.split("/")[1]
    ]
    return _strict(entry["schema"]["openAPIV3Schema"])


CRDS = {"TrainJob": "trainer.kubeflow.org_trainjobs.yaml",
        "TrainingRuntime": "trainer.kubeflow.org_trainingruntimes.yaml",
        "ClusterTrainingRuntime": "trainer.kubeflow.org_clustertrainingruntimes.yaml",
        "PyTorchJob": "kubeflow.org_pytorchjobs.yaml"}  # fmt: skip


@cache
def crd(kind: str, api_version: str) -> dict:
    found = yaml.safe_load((SCHEMAS / CRDS[kind]).read_text(encoding="utf-8"))
    assert found["spec"]["group"] == api_version.split("/")[0] and found["spec"]["names"]["kind"] == kind
    return found


def scope(obj: dict) -> str:
    """Namespaced or Cluster: where an object lives, and so who may apply it."""
    if obj["apiVersion"] == "v1":
        return {"ConfigMap": "Namespaced", "Namespace": "Cluster", "PersistentVolume": "Cluster"}[obj["kind"]]
    return crd(obj["kind"], obj["apiVersion"])["spec"]["scope"]


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
    found += [f"{obj['kind']}: {message}" for message in cel_violations(obj)[0]]
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
    if obj["kind"] in ("ClusterTrainingRuntime", "TrainingRuntime"):
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


# --- the CRDs' CEL rules ----------------------------------------------------------------------

_MATCHES = re.compile(r"^self((?:\.\w+)*)\.matches\('(.+)'\)$")
_SIZE = re.compile(r"^size\(self((?:\.\w+)*)\) <= (\d+)$")


def cel_rules(schema: dict, value, path: str = "") -> list[tuple[str, str, str, object]]:
    """(path, rule, message, self) for every x-kubernetes-validations rule the schema applies to
    `value` and what it has under it; transition rules (oldSelf) judge an update, not a create."""
    found = [(path or ".", r["rule"], r.get("message", r["rule"]), value)
             for r in schema.get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]  # fmt: skip
    if isinstance(value, dict):
        for key, item in value.items():
            sub = schema.get("properties", {}).get(key)
            if sub is None and isinstance(schema.get("additionalProperties"), dict):
                sub = schema["additionalProperties"]
            if sub is not None:
                found += cel_rules(sub, item, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, item in enumerate(value):
            found += cel_rules(schema["items"], item, f"{path}[{n}]")
    return found


def cel_violations(obj: dict) -> tuple[list[str], int]:
    """The rules of its CRD that `obj` breaks, and how many rules were evaluated: all of them
    with cel-python, else those that are a regular expression match or a size bound."""
    (entry,) = [v for v in crd(obj["kind"], obj["apiVersion"])["spec"]["versions"]
                if v["name"] == obj["apiVersion"].split("/")[1]]  # fmt: skip
    rules = cel_rules(entry["schema"]["openAPIV3Schema"], obj)
    broken, evaluated = [], 0
    try:
        import celpy
    except ImportError:
        celpy = None
    for path, rule, message, value in rules:
        if celpy is not None:
            env = celpy.Environment()
            ok = bool(env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)}))
        elif m := _MATCHES.match(rule) or _SIZE.match(rule):
            for key in filter(None, m.group(1).split(".")):
                value = value[key]
            ok = bool(re.search(m.group(2), value)) if m.re is _MATCHES else len(value) <= int(m.group(2))
        else:
            continue
        evaluated += 1
        if not ok:
            broken.append(f"{message} ({rule}) at {path}")
    return broken, evaluated


def test_the_cel_rules_are_evaluated_and_refuse_what_the_api_server_would():
    """The TrainJob name rule a name such as 2-sft breaks, as the API server would say it."""
    (_, _, job) = render_k8s(spec(**JOBS["4x8-zero3"]), 1234, 100, "run1", "v2")
    assert cel_violations(job) == ([], cel_violations(job)[1]) and cel_violations(job)[1] >= 2
    for bad in ("2-sft-run1", "sft_1-run1", "x" * 64):
        broken, _ = cel_violations({**job, "metadata": {**job["metadata"], "name": bad}})
        assert broken and all("metadata.name" in b for b in broken), bad


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
    # The TrainJob's name rule (checked with its CRD's CEL above), which the training operator's
    # webhook applies to a PyTorchJob too.
    assert all(re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]) for d in docs)
    runtime = "ClusterTrainingRuntime" if s.cluster.k8s_runtime == "cluster" else "TrainingRuntime"
    assert [d["kind"] for d in docs] == (
        ["ConfigMap", runtime, "TrainJob"] if api == "v2" else ["ConfigMap", "PyTorchJob"]
    )
    if s.cluster.k8s_runtime == "namespace":  # what a user without cluster-admin may apply
        assert {scope(d) for d in docs} == {"Namespaced"}
    if not s.cluster.host_paths:  # what Pod Security's baseline and restricted levels admit
        volumes = [
            v
            for obj in docs
            if obj["kind"] != "ConfigMap"
            for p in pods(obj)
            for v in p["spec"].get("volumes", [])
        ]
        assert volumes and all("hostPath" not in v for v in volumes)


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
    s = spec(**{**JOBS["1node"], "cluster": {"registry": "registry.internal:5000", "host_paths": True}})
    (config_map, pytorchjob) = render_k8s(s, 1, 1, "r", "v1")
    container = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.internal:5000/runner/cpu:latest"
    assert container["imagePullPolicy"] == "IfNotPresent"
    volumes = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    assert {"name": "host-2", "hostPath": {"path": "/out", "type": "DirectoryOrCreate"}} in volumes
    assert "Worker" not in pytorchjob["spec"]["pytorchReplicaSpecs"]
    assert container["command"] == ["python", "-m", "runner.train", "/etc/runner/job.yaml"]  # one process


def test_k8s_names_are_derived_safely_or_refused_at_validate():
    """Any job name gives object names the TrainJob's rule accepts; a k8s_name the user sets is
    checked when the spec is."""
    for name in ("2-sft", "SFT_v2.1", "a", "9", "x" * 90, "Qwen2.5-7B--lora_"):
        derived = k8s_safe_name(name)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", derived) and len(derived) <= K8S_NAME_MAX, name
    assert k8s_safe_name("2-sft") == "job-2-sft" and k8s_safe_name("SFT_v2.1") == "sft-v2-1"
    objects = render_k8s(spec(**JOBS["2x-shared"]), 1234, 100, "0101-abcd", "v2")
    assert {o["metadata"]["name"] for o in objects[::2]} == {"job-2-sft-0101-abcd"}
    assert spec(cluster={"k8s_name": "sft-two"}).cluster.k8s_name == "sft-two"
    with pytest.raises(ValueError, match="must be a Kubernetes name"):
        spec(cluster={"k8s_name": "2-sft"})


def test_k8s_refuses_host_paths_unless_asked():
    """Pod Security's baseline and restricted levels refuse hostPath: paths on no claim are
    refused, naming the key and the two ways out."""
    with pytest.raises(ClusterInputError) as refused:
        render_k8s(spec(image="cpu", resources={"gpus": 0}), 1234, 100, "r", "v2")
    assert refused.value.loc == ("cluster", "volumes")
    assert "/models/m (model.path) is on no claim" in refused.value.message
    assert "{/models: CLAIM}" in refused.value.message and "cluster.host_paths: true" in refused.value.message
    objects = render_k8s(
        spec(image="cpu", resources={"gpus": 0}, cluster={"host_paths": True}), 1, 1, "r", "v1"
    )
    volumes = objects[1]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"]
    assert {"name": "host-0", "hostPath": {"path": "/models/m"}} in volumes


# --- Slurm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["docker", "enroot", "apptainer"])
@pytest.mark.parametrize("job", JOBS)
def test_slurm_golden_and_shell_checks(job: str, runtime: str, tmp_path: Path):
    changes = copy.deepcopy(JOBS[job])
    changes.setdefault("cluster", {})["container_runtime"] = runtime
    text = render_slurm(spec(**changes), RUN_DIR, uid=1234, gid=100)
    golden(f"slurm-{job}-{runtime}.sbatch", text)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "export -f" not in text  # SLURM_EXPORT_ENV=NONE and friends cannot lose the node's program
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed here (scripts/provision-docker.sh installs it)")
    checked = subprocess.run(["shellcheck", "--shell=bash", str(script)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_slurm_asks_for_what_the_launch_needs():
    """Every resource explicit, the log where the run is, a requeue that continues the run."""
    whole = render_slurm(spec(**JOBS["4x8-zero3"]), RUN_DIR, 1234, 100)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --exclusive", "#SBATCH --mem=0",
                 "#SBATCH --gpus-per-node=8", f"#SBATCH --output={RUN_DIR}/train.log", "#SBATCH --open-mode=append",
                 "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300", '--cpus-per-task="${CPUS_PER_TASK}"',
                 "--export=ALL", '--node-rank="${SLURM_NODEID}"', '--master-addr="${MASTER_ADDR}"',
                 '--master-port="${MASTER_PORT}"', 'MASTER_PORT="$((20000 + SLURM_JOB_ID % 10000))"',
                 "--sig-proxy=false", "--shm-size 64g", "--volume /models/m:/models/m:ro",
                 f"--volume {RUN_DIR}:{RUN_DIR}:rw", f"--run-dir {RUN_DIR}"):  # fmt: skip
        assert line in whole, line
    shared = render_slurm(spec(**JOBS["2x-shared"]), RUN_DIR, 1234, 100)
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "--cpus-per-task=8", "--cpus=8",
                 "--memory=32G", "#SBATCH --signal=B:USR1@600", "#SBATCH --time=2:00:00"):  # fmt: skip
        assert line in shared, line
    assert "--exclusive" not in shared and "CPUS_PER_TASK" not in shared
    one = render_slurm(spec(**JOBS["1node"]), RUN_DIR, 1234, 100)
    assert (
        "MASTER_ADDR" not in one and " python -m runner.train " in one
    )  # one node: no rendezvous to arrange
    apptainer = render_slurm(spec(**{**JOBS["4x8-zero3"], "cluster": {"container_runtime": "apptainer"}}),
                             RUN_DIR, 1234, 100)  # fmt: skip
    assert 'export "APPTAINERENV_${var}=${!var}"' in apptainer and "--bind /dev/infiniband" in apptainer


# --- the batch script under bash, Slurm's and Docker's commands stood in for ------------------

STAND_INS = {
    # srun: every node's task at once, here, with its SLURM_NODEID; its pids for scancel.
    "srun": """#!/bin/bash
nodes=1
while [ "${1#-}" != "$1" ]; do case "$1" in --nodes=*) nodes="${1#--nodes=}" ;; esac; shift; done
pids=()
for ((i = 0; i < nodes; i++)); do SLURM_NODEID=$i "$@" & pids+=($!); done
echo "${pids[*]}" >"$LOG/tasks"
code=0
for pid in "${pids[@]}"; do wait "$pid" || code=$?; done
exit "$code"
""",
    "scontrol": """#!/bin/bash
case "$1 $2" in
"show hostnames") echo node1; echo node2 ;;
"show config") echo "KillWait                = 30 sec" ;;
*) echo "$*" >>"$LOG/scontrol" ;;
esac
""",
    "sinfo": "#!/bin/bash\necho 10.0.0.1\n",
    # scancel --signal=SIG JOB: the signal to every task, as Slurm sends it to the steps.
    "scancel": """#!/bin/bash
echo "$*" >>"$LOG/scancel"
sig="${1#--signal=}"
for pid in $(cat "$LOG/tasks"); do kill -s "$sig" "$pid"; done
""",
    # docker: each call's arguments, one a line; `run` (with TRAIN set) trains until `kill` asks
    # it to stop, then saves (the stop mark) and exits as a stopped job does.
    "docker": """#!/bin/bash
{ printf '%s\\n' "$@"; echo ---; } >>"$LOG/docker-$SLURM_NODEID"
case "$1" in
run) [ -n "${TRAIN:-}" ] || exit 0
    for _ in $(seq 300); do [ -e "$LOG/stop" ] && { touch "$STOP_MARK"; exit 143; }; sleep 0.1; done; exit 0 ;;
kill) touch "$LOG/stop" ;;
esac
""",
}


def run_script(tmp_path: Path, text: str, stop_mark: Path, signal_after: float | None = None):
    """The script under bash as the first node's batch shell of Slurm job 4242, with the stand-ins;
    `signal_after`: USR1 to the batch shell then, as --signal=B:USR1 sends it."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    for d in (bin_dir, log):
        d.mkdir(exist_ok=True)
    for name, body in STAND_INS.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "STOP_MARK": str(stop_mark),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
           **({"TRAIN": "1"} if signal_after is not None else {})}  # fmt: skip
    proc = subprocess.Popen(
        ["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if signal_after is not None:
        time.sleep(signal_after)
        proc.send_signal(signal.SIGUSR1)
    out = proc.communicate(timeout=60)[0]
    calls = {f.name: f.read_text() for f in log.iterdir()}
    return proc.returncode, out, calls


def test_the_script_passes_hostile_paths_and_each_node_its_rank(tmp_path: Path):
    hostile = '/data/it\'s a $(touch pwned) `x` "file".json'
    run_dir = tmp_path / "out" / "job" / "run 1"
    (run_dir / "checkpoints").mkdir(parents=True)
    s = spec(**{**JOBS["2x-shared"], "data": {"datasets": [{"path": hostile}]}})
    code, out, calls = run_script(tmp_path, render_slurm(s, run_dir, 1234, 100), run_dir / "stopped")
    assert code == 0, out
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    for rank in (0, 1):
        docker = calls[f"docker-{rank}"].split("---\n")
        assert docker[0].splitlines()[:2] == ["rm", "--force"]  # what an earlier start left goes first
        argv = docker[1].splitlines()
        assert argv[:2] == ["run", "--sig-proxy=false"]
        assert f"{hostile}:{hostile}:ro" in argv and f"--node-rank={rank}" in argv
        assert "--master-addr=10.0.0.1" in argv and "--master-port=24242" in argv
        assert f"runner-2-sft-4242-n{rank}" in argv and "RUNNER_RESUME=0" in argv
    assert "scontrol" not in calls  # not near the time limit: no requeue


def test_ahead_of_the_time_limit_the_nodes_stop_and_the_job_is_requeued(tmp_path: Path):
    """USR1 to the batch shell: USR1 to the steps, which stop their containers with a checkpoint;
    then, and only with the stop mark there, the requeue. A start with a checkpoint resumes."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    text = render_slurm(spec(**JOBS["2x-shared"]), run_dir, 1234, 100)
    code, out, calls = run_script(tmp_path, text, run_dir / "stopped", signal_after=2.0)
    assert code == 0, out
    assert calls["scancel"] == "--signal=USR1 4242\n"
    for rank in (0, 1):
        assert "kill\n--signal=TERM\nrunner-2-sft-4242-n" + str(rank) in calls[f"docker-{rank}"]
        assert "RUNNER_RESUME=1" in calls[f"docker-{rank}"]
    assert calls["scontrol"] == "requeue 4242\n"
    assert "stopped ahead of the time limit with a checkpoint saved; requeued" in out


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


def test_k8s_resolves_the_image_as_every_target_does(tmp_path: Path):
    """`image: NAME` is the image `runner build NAME` makes, whatever the current directory holds;
    not loaded in this machine's engine, it is said (the nodes never pull it)."""
    job = _job(tmp_path, image="default", resources={"gpus": 0}, cluster={"host_paths": True})
    result = runner_cli("render", str(job), "--target", "k8s", cwd=tmp_path)  # no images/ there
    assert result.returncode == 0, result.stderr
    assert "image: localhost/runner/default:latest" in result.stdout
    job = _job(tmp_path, image="nosuchimage", resources={"gpus": 0}, cluster={"host_paths": True})
    result = runner_cli("render", str(job), "--target", "k8s", cwd=tmp_path)
    assert result.returncode == 0 and "image: localhost/runner/nosuchimage:latest" in result.stdout
    if os.path.exists("/var/run/docker.sock"):
        assert "localhost/runner/nosuchimage:latest is not loaded" in result.stderr, result.stderr


def test_k8s_name_rule_is_checked_at_validate(tmp_path: Path):
    job = _job(tmp_path, cluster={"k8s_name": "2-sft"})
    result = runner_cli("validate", str(job), cwd=tmp_path)
    _refused(
        result, f"{job}:", "cluster.k8s_name: must be a Kubernetes name", "(got '2-sft'); e.g. job-2-sft"
    )


def test_k8s_paths_on_no_claim_are_refused(tmp_path: Path):
    job = _job(tmp_path, image="cpu", resources={"gpus": 0})
    result = runner_cli("render", str(job), "--target", "k8s", cwd=tmp_path)
    _refused(result, f"{job}:", "cluster.volumes:", "is on no claim", "cluster.host_paths: true")
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


def test_slurm_cli_makes_the_run_and_writes_its_script(tmp_path: Path):
    """The run directory first (its spec, its record), the script in it: what Slurm does to the
    job (its log, a requeue) lands in that run. Rendering needs no Slurm here."""
    job = _job(tmp_path, image="cpu", resources={"gpus": 0})
    result = runner_cli(
        "render", str(job), "--target", "slurm", "-o", str(tmp_path / "copy.sbatch"), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "out" / "job").iterdir()
    script = (run_dir / "job.sbatch").read_text()
    assert f"--run-dir {run_dir}" in script and f"#SBATCH --output={run_dir / 'train.log'}" in script
    assert (tmp_path / "copy.sbatch").read_text() == script
    record = json.loads((run_dir / "run.json").read_text())
    assert record["executor"] == "slurm" and record["image"] == "localhost/runner/cpu:latest"
    assert f"sbatch {run_dir / 'job.sbatch'}" in result.stdout and (run_dir / "spec.yaml").is_file()


def test_slurm_rendering_that_cannot_run_makes_no_run(tmp_path: Path):
    job = _job(tmp_path, image="cpu", resources={"gpus": "all"})
    _refused(runner_cli("render", str(job), "--target", "slurm", cwd=tmp_path), "resources.gpus:", "e.g. 8")
    assert not (tmp_path / "out").exists()
    job = _job(tmp_path, resources={"gpus": 0}, cluster={"cpus_per_node": 4, "time_limit": "1:00"})
    _refused(runner_cli("validate", str(job), cwd=tmp_path),
             "cluster.cpus_per_node: is 4, so the job shares its nodes", "cluster.memory_per_node too",
             "cluster.stop_before_limit: is 300 s, and cluster.time_limit (60 s) leaves no time")  # fmt: skip


def test_k8s_cli_renders_where_the_cluster_files_are_not(tmp_path: Path):
    """The model and data live on the cluster's volumes: rendering needs none of them here."""
    job = _job(tmp_path, image="registry.internal/runner/x:1", resources={"gpus": 2},
               model={"path": "/models/not-here"}, cluster={"volumes": {"/models": "models"}, "host_paths": True})  # fmt: skip
    out = tmp_path / "job-k8s.yaml"
    result = runner_cli("render", str(job), "--target", "k8s", "--api", "v1", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "PyTorchJob"] and all(errors(d) == [] for d in docs)
    assert f"kubectl apply -f {out}" in result.stdout
