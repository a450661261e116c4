"""render_slurm(job) -> str: an sbatch script that runs the job, one container per node.

A projection of the job's launch (runner.core.launch) and of its container
(runner.host.render.container): the same command, environment and mounts as `runner submit`. Slurm
decides the nodes: node rank from SLURM_NODEID, the rendezvous on the allocation's first node,
the launch id from SLURM_JOB_ID. The entrypoint creates the run directory under output.dir from
the resolved spec written next to the script (on storage every node mounts), so every sbatch
is a new run.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath

from runner.core.jobspec.job import JobSpec
from runner.core.launch import at_rendezvous, launch_env, mounts, render_launch, started_by
from runner.host.render import lockdown
from runner.host.render.container import docker_run_argv, image_ref, render_container
from runner.host.render.k8s import gpus_per_node

# Stand-ins for the shell variables a node's command reads; written as "${VAR}" in the script.
_VARS = ("SLURM_NODEID", "SLURM_JOB_ID", "MASTER_ADDR")
_MARK = {var: f"\x00{var}\x00" for var in _VARS}


def _word(token: str) -> str:
    """One shell word: literal text quoted, the stand-ins left for the shell to expand."""
    parts = token.split("\x00")
    return (
        "".join(f'"${{{part}}}"' if i % 2 else shlex.quote(part) for i, part in enumerate(parts) if part)
        or "''"
    )


def _line(argv: list[str]) -> str:
    return " ".join(_word(t) for t in argv)


def container_file(spec: JobSpec) -> str:
    suffix = ".sqsh" if spec.cluster.container_runtime == "enroot" else ".sif"
    return spec.cluster.container_image or str(
        PurePath(spec.output.dir) / f"{spec.image.split('/')[-1].split(':')[0]}{suffix}"
    )


def node_command(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> list[str]:
    """What each node runs (for enroot, inside the container pyxis starts)."""
    node = at_rendezvous(spec, _MARK["SLURM_NODEID"], _MARK["MASTER_ADDR"])
    runtime = spec.cluster.container_runtime
    env = {**launch_env(spec, None), **started_by("slurm", spec)}
    if spec.resources.nodes > 1:
        env["PET_RDZV_ID"] = _MARK["SLURM_JOB_ID"]  # torchrun's --rdzv-id: one launch per Slurm job
    if runtime == "docker":
        config = render_container(node, None, uid, gid, f"{_MARK['SLURM_JOB_ID']}-n{_MARK['SLURM_NODEID']}",
                                  spec_file=spec_file)  # fmt: skip
        config["environment"].update(env)
        config["labels"]["runner.slurm-job"] = _MARK["SLURM_JOB_ID"]
        return docker_run_argv(config)
    argv = render_launch(node, None, python="python", spec_file=spec_file)
    if runtime == "enroot":
        return argv  # pyxis starts the container; the environment passes through srun
    binds = [f"{p}:{p}:{mode}" for p, mode in mounts(spec, None, spec_file).items()]
    flags = ["apptainer", "exec", "--cleanenv", "--containall", *lockdown.apptainer_flags(), "--pwd",
             spec.output.dir]  # fmt: skip
    if gpus_per_node(spec):
        flags.append("--nv")
    for bind in binds:
        flags += ["--bind", bind]
    for key, value in {**env, "HOME": "/tmp"}.items():
        flags += ["--env", f"{key}={value}"]
    return flags + [container_file(spec), *argv]


def render_slurm(spec: JobSpec, spec_file: PurePath, uid: int, gid: int) -> str:
    nodes, runtime = spec.resources.nodes, spec.cluster.container_runtime
    gpus = gpus_per_node(spec)
    log_dir = PurePath(spec.output.dir) / spec.name
    lines = ["#!/bin/bash",
             f"# Rendered by `runner render --target slurm` for job '{spec.name}' ({runtime} containers). "
             "Each `sbatch` of this file is a new run.",
             f"#SBATCH --job-name={spec.name}", f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --output={log_dir}/slurm-%j.out"]  # fmt: skip
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
        if runtime == "docker":
            lines += [
                "# The whole node: docker's --gpus does not see which GPUs Slurm bound.",
                "#SBATCH --exclusive",
            ]
    if spec.cluster.partition:
        lines.append(f"#SBATCH --partition={spec.cluster.partition}")
    if spec.cluster.time_limit:
        lines.append(f"#SBATCH --time={spec.cluster.time_limit}")
    lines += ["set -euo pipefail", "",
              "# The rendezvous: the allocation's first node.",
              'MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"',
              "export MASTER_ADDR", ""]  # fmt: skip
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    command = node_command(spec, spec_file, uid, gid)
    if runtime == "enroot":
        env = {**launch_env(spec, None), **started_by("slurm", spec), "HOME": "/tmp"}
        if nodes > 1:
            env["PET_RDZV_ID"] = _MARK["SLURM_JOB_ID"]
        lines.append("# The job's environment; srun passes it into each node's container.")
        lines += [f"export {key}={_word(value)}" for key, value in env.items()]
        lines.append("")
        mounts_flag = ",".join(f"{p}:{p}:{mode}" for p, mode in mounts(spec, None, spec_file).items())
        srun += [f"--container-image={container_file(spec)}", f"--container-mounts={mounts_flag}",
                 f"--container-workdir={spec.output.dir}", "--no-container-remap-root"]  # fmt: skip
    lines += ["# What each node runs: one container, torchrun inside it with this node's rank.",
              "runner_node() {", f"    exec {_line(command)}", "}", "export -f runner_node", "",
              "# One task per node, each running runner_node.",
              _line([*srun, 'bash', '-c', 'runner_node'])]  # fmt: skip
    return "\n".join(lines) + "\n"


def default_image_note(spec: JobSpec) -> str | None:
    """How to make the image file enroot or apptainer reads from the loaded bundle's image."""
    ref = image_ref(spec)
    if spec.cluster.container_runtime == "enroot":
        return f"enroot import -o {container_file(spec)} dockerd://{ref}"
    if spec.cluster.container_runtime == "apptainer":
        return f"apptainer build {container_file(spec)} docker-daemon://{ref}"
    return None
