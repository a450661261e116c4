"""What a job's container may do: one policy, projected into every launch form.

A job reads its model and data, writes its run directory and the data cache, and needs
nothing else from the machine: no capability, no privilege gained through a setuid binary, no
write to the image, no unbounded number of processes, and never root, even when root submits.
The docker executor, `docker run` lines (hosts, Slurm), compose files and Kubernetes manifests
each render this policy in their own words; none spells it out itself.

What a job writes besides its outputs (HOME, the HF and matplotlib caches, triton's kernels,
torch's extension builds without a data cache, Python's tmp files) goes to /tmp, a tmpfs
that lives as long as the container. It allows exec: triton and torch load what they compile
there.
"""

from __future__ import annotations

from typing import Any

# Root's jobs run as nobody:nogroup; everyone else's as themselves (outputs are theirs).
UNPRIVILEGED = (65534, 65534)
# Processes and threads in the container: far above what a training job starts (ranks, their
# threads, dataloader and tokenizer workers), far below what exhausts a machine.
PIDS_LIMIT = 32768
TMP = "/tmp"
TMPFS_OPTIONS = "rw,exec,nosuid,nodev"
CAP_DROP = ["ALL"]
NO_NEW_PRIVILEGES = "no-new-privileges"  # docker's --security-opt, compose's security_opt


def job_user(uid: int, gid: int) -> tuple[int, int]:
    """The uid:gid a job runs as: the submitter's, or an unprivileged one in root's place."""
    return UNPRIVILEGED if uid == 0 else (uid, gid)


def docker_kwargs() -> dict[str, Any]:
    """The policy as docker SDK `containers.create` keyword arguments."""
    return {
        "cap_drop": list(CAP_DROP),
        "security_opt": [NO_NEW_PRIVILEGES],
        "pids_limit": PIDS_LIMIT,
        "read_only": True,
        "tmpfs": {TMP: TMPFS_OPTIONS},
    }


def docker_flags(config: dict[str, Any]) -> list[str]:
    """A rendered container's policy keys (docker_kwargs) as `docker run` flags."""
    flags = [f"--cap-drop={cap}" for cap in config["cap_drop"]]
    flags += [f"--security-opt={opt}" for opt in config["security_opt"]]
    flags += [f"--pids-limit={config['pids_limit']}"]
    flags += ["--read-only"] if config["read_only"] else []
    for path, options in config["tmpfs"].items():
        flags += [f"--tmpfs={path}:{options}"]
    return flags


def compose_keys() -> dict[str, Any]:
    """The policy as keys of a compose service (Compose v2 and docker-compose v1)."""
    kwargs = docker_kwargs()
    return {
        "cap_drop": kwargs["cap_drop"],
        "security_opt": kwargs["security_opt"],
        "pids_limit": kwargs["pids_limit"],
        "read_only": kwargs["read_only"],
        "tmpfs": [f"{path}:{options}" for path, options in kwargs["tmpfs"].items()],
    }


def k8s_container_security() -> dict[str, Any]:
    """A container's securityContext. The pod's pids are bounded by the kubelet
    (podPidsLimit), which no manifest can set."""
    return {
        "allowPrivilegeEscalation": False,  # no_new_privs
        "capabilities": {"drop": list(CAP_DROP)},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
    }


def k8s_pod_security(uid: int, gid: int) -> dict[str, Any]:
    """The pod's securityContext: the job's user (never root), the runtime's seccomp profile
    (docker applies its default one unasked; Kubernetes only when told)."""
    uid, gid = job_user(uid, gid)
    return {"runAsUser": uid, "runAsGroup": gid, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}  # fmt: skip


def k8s_tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount): /tmp, writable under a read-only root filesystem."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": TMP}


def apptainer_flags() -> list[str]:
    """Apptainer already runs as the user, sets no_new_privs and mounts the image read-only, and
    with --containall /tmp is the container's own; --no-privs drops the capabilities root would
    keep. It has no pids limit of its own: the Slurm job's cgroup bounds it."""
    return ["--no-privs"]
