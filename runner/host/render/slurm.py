"""render_slurm(job, run_dir) -> str: the sbatch script of one run, one container per node.

A projection of the job's launch (runner.core.launch) and of its container
(runner.host.render.container): the same command, environment and mounts as `runner submit`.
The run directory exists before the script (runner made it, on storage every node mounts), so
whatever Slurm does to the job lands in that run: its output is the run's train.log, and a
start after a requeue (the time limit's, a failed node's) or a second sbatch continues the run
from its newest complete checkpoint.

What an administrator expects of a job script, and what each line is for:
- one task per node, its CPUs and memory asked for explicitly (a task otherwise gets the
  site's default, often one CPU, for torchrun, every rank and their data workers); whole nodes
  unless cluster.cpus_per_node shares them;
- the rendezvous on the first node, at the address Slurm itself reaches it at, on a port of
  this job's own, so two jobs sharing a first node do not collide;
- `srun --export=ALL` and the node's program passed as an argument (`declare -f`), so neither
  SLURM_EXPORT_ENV=NONE nor a bash without exported functions can lose it;
- GPUs and InfiniBand devices, Slurm's GPU binding and the site's NCCL_*/UCX_* settings passed
  into the container;
- ahead of the time limit (#SBATCH --signal) the job saves a checkpoint and stops, and the
  script requeues it; `runner stop` sends the same stop without the requeue.
"""

from __future__ import annotations

import shlex
from pathlib import PurePath

from runner.core.jobspec.job import JobSpec
from runner.core.launch import at_rendezvous, launch_env, mounts, render_launch
from runner.core.rundir import RunDir
from runner.host.render import lockdown
from runner.host.render.container import docker_run_argv, image_ref, render_container
from runner.host.render.k8s import gpus_per_node

# Shell variables a node's command reads, written as "${VAR}" in the script. The node's rank
# and the job's id are Slurm's; the rest the script sets before srun.
_VARS = ("SLURM_NODEID", "SLURM_JOB_ID", "MASTER_ADDR", "MASTER_PORT", "RUNNER_RESUME", "CPUS_PER_TASK")
_MARK = {var: f"\x00{var}\x00" for var in _VARS}
# The rendezvous port: 20000 + the job id's last four digits, below Linux's ephemeral ports
# (32768-60999), so no outgoing connection of another process can be holding it.
PORT_BASE, PORT_SPAN = 20000, 10000
# What the batch shell sends the job's steps to make them save a checkpoint and stop. docker:
# USR1 to the node's shell, which turns it into a TERM for the container (the docker client
# ignores USR1); enroot and apptainer: TERM to every process of the step, torchrun and the
# ranks included, each of which saves and stops on it.
STOP_SIGNAL = {"docker": "USR1", "enroot": "TERM", "apptainer": "TERM"}
# Site variables a container gets from the node where the launch does not set them itself.
PASSED = ("NCCL_*", "UCX_*")


def _word(token: str) -> str:
    """One shell word: literal text quoted, the stand-ins left for the shell to expand."""
    parts = token.split("\x00")
    return (
        "".join(f'"${{{part}}}"' if i % 2 else shlex.quote(part) for i, part in enumerate(parts) if part)
        or "''"
    )


def _line(argv: list[str]) -> str:
    return " ".join(_word(t) for t in argv)


def _command(program: list[str], options: list[str], tail: str, indent: str, *raw: str) -> list[str]:
    """A long command one option (and its value) a line, `\\`-continued: the program, its options,
    the `raw` shell words as they are (such as "${devices[@]}"), and the tail last (the image and
    its command, already a shell line)."""
    groups: list[list[str]] = []
    for token in options:
        if groups and not token.startswith("-"):
            groups[-1].append(token)  # the value of the option before it
        else:
            groups.append([token])
    rows = [_line(program)] + [_line(g) for g in groups] + list(raw) + [tail]
    ends = [" \\"] * (len(rows) - 1) + [""]
    return [
        f"{indent}{'    ' if i else ''}{row}{end}"
        for i, (row, end) in enumerate(zip(rows, ends, strict=True))
    ]


def container_file(spec: JobSpec) -> str:
    suffix = ".sqsh" if spec.cluster.container_runtime == "enroot" else ".sif"
    return spec.cluster.container_image or str(
        PurePath(spec.output.dir) / f"{spec.image.split('/')[-1].split(':')[0]}{suffix}"
    )


def _node_spec(spec: JobSpec) -> JobSpec:
    return at_rendezvous(spec, _MARK["SLURM_NODEID"], _MARK["MASTER_ADDR"], _MARK["MASTER_PORT"])


def _env(spec: JobSpec) -> dict[str, str]:
    return {**launch_env(spec, None), "HOME": "/tmp", "RUNNER_RESUME": _MARK["RUNNER_RESUME"]}


def _passed(spec: JobSpec, way: str) -> list[str]:
    """The loop that hands the node's NCCL_*/UCX_* settings (and for apptainer Slurm's GPU
    binding) to the container, skipping those the launch sets itself."""
    own = sorted(k for k in launch_env(spec, None) if any(k.startswith(p[:-1]) for p in PASSED))
    names = " ".join(f"${{!{p}}}" for p in PASSED)
    if way == "apptainer":
        names = f"CUDA_VISIBLE_DEVICES {names}"
        action = '[ -n "${!var+x}" ] && export "APPTAINERENV_${var}=${!var}"'
    else:
        action = 'passed+=(--env "${var}")'
    skip = f'case "${{var}}" in {"|".join(own)}) continue ;; esac; ' if own else ""
    return [f"    for var in {names}; do {skip}{action}; done"]


def _docker_node(spec: JobSpec, run_dir: PurePath, uid: int, gid: int) -> list[str]:
    node = _node_spec(spec)
    config = render_container(node, run_dir, uid, gid, f"{_MARK['SLURM_JOB_ID']}-n{_MARK['SLURM_NODEID']}")
    config["environment"].update(_env(spec))
    config["labels"]["runner.slurm-job"] = _MARK["SLURM_JOB_ID"]
    argv = docker_run_argv(config)
    argv[2:2] = ["--sig-proxy=false"]  # the stop is this shell's to pass on, once
    if spec.cluster.cpus_per_node:  # the container is outside the job's cgroup: limits of its own
        argv[3:3] = [f"--cpus={spec.cluster.cpus_per_node}", f"--memory={spec.cluster.memory_per_node}"]
    name, tail = config["name"], len(argv) - len(config["command"]) - 1  # the image, then its command
    return [
        "runner_node() {",
        f"    local name={_word(name)} devices=() passed=() client code=0",
        "    # A container an earlier start of this job left on this node (a requeue) goes first.",
        '    docker rm --force "${name}" >/dev/null 2>&1 || true',
        '    if [ -d /dev/infiniband ]; then devices+=(--device=/dev/infiniband); fi',
        *_passed(spec, "docker"),
        "    # The container is dockerd's, outside the job's cgroup: Slurm's signals reach this shell",
        "    # and the docker client only, so this shell passes them on. USR1 (runner stop, the time",
        "    # limit ahead): the job saves a checkpoint and stops, however long that takes. TERM",
        "    # (scancel, the time limit itself): the same within Slurm's KillWait; then the container is",
        "    # killed, before Slurm kills this shell and the container would outlive the job.",
        "    trap 'docker kill --signal=TERM \"${name}\" >/dev/null 2>&1 || true' USR1",
        "    trap 'docker kill --signal=TERM \"${name}\" >/dev/null 2>&1 || true",
        '          timeout "$((KILL_WAIT > 10 ? KILL_WAIT - 5 : 5))" docker wait "${name}" >/dev/null 2>&1 || true',
        "          docker rm --force \"${name}\" >/dev/null 2>&1 || true",
        "          exit 143' TERM",
        *_command(argv[:2], argv[2:tail], f"{_line(argv[tail:])} &", "    ", '"${devices[@]}"',
                  '"${passed[@]}"'),
        "    client=$!",
        '    wait "${client}" || code=$?',
        '    while kill -0 "${client}" 2>/dev/null; do code=0; wait "${client}" || code=$?; done',
        '    return "${code}"',
        "}",
    ]  # fmt: skip


def _apptainer_node(spec: JobSpec, run_dir: PurePath) -> list[str]:
    argv = render_launch(_node_spec(spec), run_dir, python="python")
    flags = ["apptainer", "exec", "--cleanenv", "--containall", *lockdown.apptainer_flags(),
             "--pwd", str(run_dir)]  # fmt: skip
    if gpus_per_node(spec):
        flags.append("--nv")
    for path, mode in mounts(spec, run_dir).items():
        flags += ["--bind", f"{path}:{path}:{mode}"]
    for key, value in _env(spec).items():
        flags += ["--env", f"{key}={value}"]
    return [
        "runner_node() {",
        "    local var binds=()",
        "    # --cleanenv keeps the node's environment out; Slurm's GPU binding and the site's NCCL and",
        "    # UCX settings come in all the same, and so do InfiniBand's devices (--containall's /dev lacks them).",
        *_passed(spec, "apptainer"),
        '    if [ -d /dev/infiniband ]; then binds+=(--bind /dev/infiniband); fi',
        *_command(["exec", *flags[:2]], flags[2:], _line([container_file(spec), *argv]), "    ", '"${binds[@]}"'),
        "}",
    ]  # fmt: skip


def _enroot_node(spec: JobSpec, run_dir: PurePath) -> list[str]:
    argv = render_launch(_node_spec(spec), run_dir, python="python")
    return [
        "runner_node() {",
        "    # Inside the container pyxis started: srun's environment (the node's, Slurm's GPU binding",
        "    # included) and the job's own, set here so that no SLURM_EXPORT_ENV can drop it.",
        *(f"    export {key}={_word(value)}" for key, value in _env(spec).items()),
        f"    cd {_word(str(run_dir))}",
        f"    exec {_line(argv)}",
        "}",
    ]


def render_slurm(spec: JobSpec, run_dir: PurePath, uid: int, gid: int) -> str:
    """The batch script of the run in `run_dir` (its spec.yaml the resolved spec)."""
    run = RunDir(run_dir)
    nodes, runtime, cluster = spec.resources.nodes, spec.cluster.container_runtime, spec.cluster
    gpus = gpus_per_node(spec)
    whole = cluster.cpus_per_node is None or (runtime == "docker" and bool(gpus))
    lines = ["#!/bin/bash",
             f"# Rendered by runner for job '{spec.name}', run {run.id} ({runtime} containers). Submit it",
             "# once; a requeue (ahead of the time limit, after a node's failure) or another sbatch of it",
             "# continues the run from its newest complete checkpoint.",
             f"#SBATCH --job-name={spec.name}", f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1"]  # fmt: skip
    if whole:
        why = ("docker's --gpus does not see which GPUs Slurm bound"
               if runtime == "docker" and gpus and cluster.cpus_per_node else "cluster.cpus_per_node is unset")  # fmt: skip
        lines += [f"# Whole nodes ({why}): every CPU, and all the memory.", "#SBATCH --exclusive"]
        if cluster.cpus_per_node:
            lines.append(f"#SBATCH --cpus-per-task={cluster.cpus_per_node}")
        lines.append(f"#SBATCH --mem={cluster.memory_per_node or 0}")
    else:
        lines += [
            f"#SBATCH --cpus-per-task={cluster.cpus_per_node}",
            f"#SBATCH --mem={cluster.memory_per_node}",
        ]
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    if cluster.partition:
        lines.append(f"#SBATCH --partition={cluster.partition}")
    if cluster.time_limit:
        lines.append(f"#SBATCH --time={cluster.time_limit}")
    lines += [f"#SBATCH --chdir={run.path}", f"#SBATCH --output={run.log}", "#SBATCH --open-mode=append",
              "#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{cluster.stop_before_limit}",
              "set -euo pipefail", "",
              'echo "runner: Slurm job ${SLURM_JOB_ID} on ${SLURM_JOB_NODELIST} (restart ${SLURM_RESTART_COUNT:-0})"']  # fmt: skip
    if nodes > 1:
        lines += ["# The rendezvous: the first node, at the address Slurm reaches it at, on this job's own port.",
                  'hosts="$(scontrol show hostnames "${SLURM_JOB_NODELIST}")"',
                  'addr="$(sinfo --noheader --Node --nodes="${hosts%%$\'\\n\'*}" --format=%o)"  # a line a partition',
                  'MASTER_ADDR="${addr%%$\'\\n\'*}"',
                  f'MASTER_PORT="$(({PORT_BASE} + SLURM_JOB_ID % {PORT_SPAN}))"',
                  "export MASTER_ADDR MASTER_PORT"]  # fmt: skip
    lines += ["# An earlier start left a checkpoint: continue from the newest complete one.",
              f"if compgen -G {_word(str(run.checkpoints / 'checkpoint-*'))} >/dev/null; then RUNNER_RESUME=1; "
              "else RUNNER_RESUME=0; fi",
              "export RUNNER_RESUME",
              f"rm -f {_word(str(run.stop_mark))}"]  # fmt: skip
    if cluster.cpus_per_node is None:
        lines += ["# Every CPU of the smallest node to its task (SLURM_JOB_CPUS_PER_NODE reads like 64(x2),32).",
                  "CPUS_PER_TASK=\"$(tr ',' '\\n' <<<\"${SLURM_JOB_CPUS_PER_NODE}\" | sed 's/(.*//' | sort -n | sed -n 1p)\""]  # fmt: skip
    if runtime == "docker":
        lines += ["KILL_WAIT=\"$(scontrol show config | sed -n 's/^KillWait *= *\\([0-9]*\\).*/\\1/p')\"",
                  'export KILL_WAIT="${KILL_WAIT:-30}"']  # fmt: skip
    if runtime == "enroot":
        lines += ["# enroot's hook mounts the InfiniBand devices when asked to.",
                  "if [ -d /dev/infiniband ]; then export MELLANOX_VISIBLE_DEVICES=all; fi"]  # fmt: skip
    lines += [
        "",
        "# What each node runs: one container, torchrun inside it with this node's rank.",
        "# shellcheck disable=SC2317  # it runs on the nodes, passed to srun by declare -f",
    ]
    if runtime == "docker":
        lines += _docker_node(spec, run.path, uid, gid)
    elif runtime == "apptainer":
        lines += _apptainer_node(spec, run.path)
    else:
        lines += _enroot_node(spec, run.path)
    srun = ["srun", "--export=ALL", f"--nodes={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={cluster.cpus_per_node or _MARK['CPUS_PER_TASK']}",
            "--kill-on-bad-exit=1"]  # fmt: skip
    if runtime == "enroot":
        mounted = ",".join(f"{p}:{p}:{mode}" for p, mode in mounts(spec, run.path).items())
        srun += [f"--container-image={container_file(spec)}", f"--container-mounts={mounted}",
                 f"--container-workdir={run.path}", "--no-container-remap-root"]  # fmt: skip
    stop = STOP_SIGNAL[runtime]
    lines += ["",
              f"# Ahead of the time limit (USR1, from --signal): every node saves a checkpoint and stops ({stop}",
              "# to the steps), and the job is requeued once they have.",
              "near_limit=0",
              f"trap 'near_limit=1; scancel --signal={stop} \"${{SLURM_JOB_ID}}\" || true' USR1",
              "",
              "# One task per node, each running runner_node (passed as an argument, not exported).",
              *_command(srun[:1], srun[1:], 'bash -c "$(declare -f runner_node); runner_node" &', ""),
              "srun_pid=$!",
              "code=0",
              'wait "${srun_pid}" || code=$?',
              'while kill -0 "${srun_pid}" 2>/dev/null; do code=0; wait "${srun_pid}" || code=$?; done',
              f"if [ \"${{near_limit}}\" = 1 ] && [ -e {_word(str(run.stop_mark))} ]; then",
              '    echo "runner: stopped ahead of the time limit with a checkpoint saved; requeued"',
              '    scontrol requeue "${SLURM_JOB_ID}"',
              "    exit 0",
              "fi",
              'exit "${code}"']  # fmt: skip
    return "\n".join(lines) + "\n"


def slurm_image_note(spec: JobSpec) -> str | None:
    """How to make the image file enroot or apptainer reads from the loaded bundle's image."""
    ref = image_ref(spec)
    if spec.cluster.container_runtime == "enroot":
        return f"enroot import -o {container_file(spec)} dockerd://{ref}"
    if spec.cluster.container_runtime == "apptainer":
        return f"apptainer build {container_file(spec)} docker-daemon://{ref}"
    return None
