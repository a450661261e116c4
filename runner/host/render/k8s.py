"""render_k8s(job) -> str: the job as Kubernetes manifests for the Kubeflow Trainer.

`api="v2"`: a TrainJob (trainer.kubeflow.org/v1alpha1) on a training runtime of the
torch-distributed kind that runner renders too (it carries the image pull policy, which a
TrainJob cannot set): a TrainingRuntime in the job's namespace, which whoever may create the
TrainJob may apply, or with cluster.k8s_runtime: cluster a ClusterTrainingRuntime (cluster-admin
applies it); `api="v1"`: a PyTorchJob (kubeflow.org/v1, the training operator). Both come with a
ConfigMap holding the resolved spec (and the DeepSpeed config it renders). Nothing else is
cluster-scoped.

A projection of the job's launch (runner.core.launch): the same command, environment and
mounts as `runner submit`, each path mounted at the same path in the pod from the
PersistentVolumeClaim cluster.volumes names for it (from the node's disk only where
cluster.host_paths allows it: Pod Security's baseline and restricted levels refuse hostPath), so
the spec needs no rewriting. The entrypoint creates the run directory under output.dir, as a
compose file's does.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Any

from runner.core.deepspeed import render_deepspeed
from runner.core.jobspec.image import REPOSITORY
from runner.core.jobspec.job import JobSpec, k8s_safe_name
from runner.core.launch import at_rendezvous, launch_env, mounts, procs_per_node, render_launch, started_by
from runner.host.render import lockdown
from runner.host.render.container import image_ref

CONFIG_DIR = PurePosixPath("/etc/runner")
TRAINER_API = "trainer.kubeflow.org/v1alpha1"
# The references the Kubeflow controllers fill in on every node's pod (Kubernetes expands
# $(VAR) in a container's command from its environment).
RENDEZVOUS = {
    "v2": ("$(PET_NODE_RANK)", "$(PET_MASTER_ADDR)", "$(PET_MASTER_PORT)"),
    "v1": ("$(RANK)", "$(MASTER_ADDR)", "$(MASTER_PORT)"),
}
Loc = tuple[str, ...]


class ClusterInputError(Exception):
    """A spec that cannot run on the cluster as written: where (a key path) and what to do."""

    def __init__(self, loc: Loc, message: str):
        self.loc, self.message = loc, message
        super().__init__(message)


def k8s_name(spec: JobSpec) -> str:
    """The start of the job's object names: cluster.k8s_name (checked when the spec is), or one
    derived from its name that the TrainJob's name rule accepts."""
    return spec.cluster.k8s_name or k8s_safe_name(spec.name)


def cluster_image(spec: JobSpec) -> tuple[str, str]:
    """The image reference and pull policy: the offline bundle's image, already loaded on every
    node and never pulled; or, with cluster.registry, the same image from that registry."""
    ref = image_ref(spec)
    registry = spec.cluster.registry
    if registry is None:
        return ref, "Never"
    if ref.startswith(REPOSITORY + "/"):
        return f"{registry}/{ref.removeprefix('localhost/')}", "IfNotPresent"
    return ref, "IfNotPresent"  # a full reference the user gave: it names its registry itself


def gpus_per_node(spec: JobSpec) -> int:
    gpus = spec.resources.gpus
    if isinstance(gpus, list):
        return len(gpus)
    if gpus == "all":
        nproc = procs_per_node(spec)
        if isinstance(nproc, int):
            return nproc
        raise ClusterInputError(
            ("resources", "gpus"),
            "a cluster schedules GPUs by count, and 'all' names none; set resources.gpus to the GPUs "
            "of one node, e.g. 8 (or resources.procs_per_node: 8)",
        )
    return gpus


def quantity(size: str) -> str:
    """A docker size (16g, 512m, 1.5g) as a Kubernetes quantity (16Gi, 512Mi, 1536Mi)."""
    m = re.match(r"^(\d+(?:\.\d+)?)([kmg]?)b?$", size.lower())
    assert m, size  # the spec's validator accepts nothing else
    number, unit = float(m.group(1)), m.group(2)
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[unit]
    value = int(number * scale)
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if value % factor == 0:
            return f"{value // factor}{suffix}"
    return str(value)


def spec_file(spec: JobSpec) -> PurePosixPath:
    return CONFIG_DIR / f"{spec.name}.yaml"


def config_map(spec: JobSpec, name: str) -> dict[str, Any]:
    from runner.core.jobspec.load import to_yaml

    data = {spec_file(spec).name: to_yaml(spec)}
    if (ds := render_deepspeed(spec)) is not None:
        # What the entrypoint writes into the run directory, rendered here for review.
        data["deepspeed.json"] = json.dumps(ds, indent=2) + "\n"
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"runner.job": k8s_name(spec)}}, "data": data}  # fmt: skip


def _claim(path: str, volumes: dict[str, str]) -> tuple[str, str] | None:
    """The cluster.volumes entry (directory, claim) holding `path`, the deepest one."""
    hits = [
        (d, c) for d, c in volumes.items() if path == d.rstrip("/") or path.startswith(d.rstrip("/") + "/")
    ]
    return max(hits, key=lambda hit: len(hit[0])) if hits else None


def pod_volumes(spec: JobSpec, config: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumes, volumeMounts): the job's paths at the same paths, the spec, a memory /dev/shm."""
    tmp, tmp_mount = lockdown.k8s_tmp_volume()
    volumes: list[dict[str, Any]] = [
        {"name": "runner-config", "configMap": {"name": config}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": quantity(spec.resources.shm)}},
        tmp,
    ]
    mounted = [
        {"name": "runner-config", "mountPath": str(CONFIG_DIR), "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
        tmp_mount,
    ]
    claims: dict[str, tuple[str, bool]] = {}  # directory -> (claim, read-only)
    for n, (path, mode) in enumerate(mounts(spec, None).items()):
        hit = _claim(path, spec.cluster.volumes)
        if hit:
            directory, claim = hit
            read_only = claims.get(directory, (claim, True))[1] and mode == "ro"
            claims[directory] = (claim, read_only)
            continue
        if not spec.cluster.host_paths:
            raise ClusterInputError(
                ("cluster", "volumes"),
                f"{path} ({_what(spec, path)}) is on no claim: name the PersistentVolumeClaim that holds "
                f"its directory, e.g. {{{_top(path)}: CLAIM}}, or set cluster.host_paths: true to mount it "
                "from the node's disk (Pod Security's baseline and restricted levels refuse that)",
            )
        source = {"path": path, **({"type": "DirectoryOrCreate"} if mode == "rw" else {})}
        volumes.append({"name": f"host-{n}", "hostPath": source})
        mounted.append({"name": f"host-{n}", "mountPath": path, "readOnly": mode == "ro"})
    for directory, (claim, read_only) in claims.items():
        name = f"pvc-{claim}"
        if all(v["name"] != name for v in volumes):
            volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
        mounted.append({"name": name, "mountPath": directory.rstrip("/") or "/", "readOnly": read_only})
    return volumes, mounted


def _what(spec: JobSpec, path: str) -> str:
    """Which key of the spec a mounted path comes from, for a message."""
    if path == spec.output.dir:
        return "output.dir"
    if path == spec.model.path:
        return "model.path"
    if path == spec.model.adapter:
        return "model.adapter"
    return "data.datasets" if any(d.path == path for d in spec.data.datasets) else "an input of the job"


def _top(path: str) -> str:
    return "/" + PurePosixPath(path).parts[1] if len(PurePosixPath(path).parts) > 1 else path


def _env(spec: JobSpec, launch_id: str) -> list[dict[str, str]]:
    env = {**launch_env(spec, None), **started_by("k8s", spec), "HOME": "/tmp"}
    if spec.resources.nodes > 1:
        # torchrun's --rdzv-id: the launch all nodes share, under which rank 0 leaves the path
        # of the run directory it created for the others.
        env["PET_RDZV_ID"] = launch_id
    return [{"name": k, "value": v} for k, v in env.items()]


def _resources(spec: JobSpec) -> dict[str, Any]:
    gpus = gpus_per_node(spec)
    return {"limits": {"nvidia.com/gpu": gpus}} if gpus else {}


def _command(spec: JobSpec, api: str) -> list[str]:
    return render_launch(
        at_rendezvous(spec, *RENDEZVOUS[api]), None, python="python", spec_file=spec_file(spec)
    )


def _security(uid: int, gid: int) -> dict[str, Any]:
    return lockdown.k8s_pod_security(uid, gid)  # outputs belong to whoever renders the job (root: nobody)


def render_k8s(spec: JobSpec, uid: int, gid: int, launch_id: str, api: str = "v2") -> list[dict[str, Any]]:
    """The manifests, in the order to apply them. `launch_id` (lowercase letters, digits, '-')
    names this launch: each rendering is one run."""
    name = f"{k8s_name(spec)}-{launch_id}"
    image, pull = cluster_image(spec)
    gpus_per_node(spec)  # refuse 'all' before rendering anything
    volumes, volume_mounts = pod_volumes(spec, name)
    objects = [config_map(spec, name)]
    labels = {"runner.job": k8s_name(spec), "runner.launch": launch_id}
    nproc = procs_per_node(spec)
    if api == "v1":
        container = {"name": "pytorch", "image": image, "imagePullPolicy": pull,
                     "command": _command(spec, "v1"), "env": _env(spec, launch_id),
                     "ports": [{"name": "pytorchjob-port", "containerPort": spec.distributed.master_port}],
                     "resources": _resources(spec), "volumeMounts": volume_mounts,
                     "workingDir": spec.output.dir,
                     "securityContext": lockdown.k8s_container_security()}  # fmt: skip
        template = {"metadata": {"labels": labels},
                    "spec": {"containers": [container], "volumes": volumes,
                             "securityContext": _security(uid, gid)}}  # fmt: skip
        replicas = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
        if spec.resources.nodes > 1:
            replicas["Worker"] = {"replicas": spec.resources.nodes - 1, "restartPolicy": "Never",
                                  "template": template}  # fmt: skip
        job: dict[str, Any] = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                               "metadata": {"name": name, "labels": labels},
                               "spec": {"pytorchReplicaSpecs": replicas,
                                        "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "None"}}}  # fmt: skip
        if isinstance(nproc, int):
            job["spec"]["nprocPerNode"] = str(nproc)
        return objects + [job]
    runtime = training_runtime(pull, spec.cluster.k8s_runtime)
    trainer: dict[str, Any] = {"image": image, "command": _command(spec, "v2"), "env": _env(spec, launch_id),
                               "numNodes": spec.resources.nodes}  # fmt: skip
    if isinstance(nproc, int):
        trainer["numProcPerNode"] = nproc
    if resources := _resources(spec):
        trainer["resourcesPerNode"] = resources
    patch = {"manager": "runner",
             "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                 "name": "node", "template": {"spec": {"template": {
                     "metadata": {"labels": labels},
                     "spec": {"containers": [{"name": "node", "volumeMounts": volume_mounts,
                                              "securityContext": lockdown.k8s_container_security()}],
                              "volumes": volumes, "securityContext": _security(uid, gid)}}}}}]}}}}  # fmt: skip
    job = {"apiVersion": TRAINER_API, "kind": "TrainJob", "metadata": {"name": name, "labels": labels},
           "spec": {"runtimeRef": {"apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"],
                                   "name": runtime["metadata"]["name"]},
                    "trainer": trainer, "runtimePatches": [patch]}}  # fmt: skip
    return objects + [runtime, job]


def training_runtime(pull: str, scope: str = "namespace") -> dict[str, Any]:
    """torch-distributed as Kubeflow ships it, with the pull policy of an air-gapped cluster. One
    per policy (and namespace), shared by every runner job (each TrainJob sets its image, command
    and mounts): a TrainingRuntime in the job's namespace, or a ClusterTrainingRuntime."""
    container = {"name": "node", "imagePullPolicy": pull}
    kind = "ClusterTrainingRuntime" if scope == "cluster" else "TrainingRuntime"
    return {"apiVersion": TRAINER_API, "kind": kind,
            "metadata": {"name": f"runner-torch-{pull.lower()}",
                         "labels": {"trainer.kubeflow.org/framework": "torch"}},
            "spec": {"mlPolicy": {"numNodes": 1, "torch": {}},
                     "template": {"spec": {"replicatedJobs": [{
                         "name": "node", "replicas": 1,
                         "template": {"metadata": {"labels": {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}},
                                      "spec": {"template": {"spec": {"containers": [container],
                                                                      "restartPolicy": "Never"}}}}}]}}}}  # fmt: skip


def to_text(spec: JobSpec, objects: list[dict[str, Any]], api: str) -> str:
    """Multi-document YAML: `kubectl apply -f FILE`."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    objects = json.loads(json.dumps(objects))  # no shared nodes: plain YAML, no anchors
    objects = [{**o, "data": {k: LiteralScalarString(v) for k, v in o["data"].items()}} if o["kind"] == "ConfigMap"
               else o for o in objects]  # fmt: skip
    yaml = YAML()
    yaml.default_flow_style = False
    yaml.width = 4096
    out = io.StringIO()
    kind = "TrainJob" if api == "v2" else "PyTorchJob"
    out.write(f"# Rendered by `runner render --target k8s` for job '{spec.name}': a {kind}. Apply it "
              "as is (kubectl apply -f FILE); render again for another run.\n")  # fmt: skip
    yaml.dump_all(objects, out)
    return out.getvalue()
