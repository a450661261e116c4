"""Fault injection: the trainer is killed with SIGKILL at seeded random points (while it
tokenizes, in the middle of a checkpoint's save, between steps), `runner resume` follows each
kill, and the run still reaches its full step count with exactly the weights of a run that was
never interrupted. Every checkpoint a resume starts from holds the uninterrupted run's weights
of that step too. With one process, with two (torchrun, gloo: one rank is killed) and with two
under DeepSpeed ZeRO-2. A kill after the last step's checkpoint, before the model is written,
resumes without training a step more. The preference stages' TRL trainers the same way: dpo
(against a frozen copy of the model) and rm with the suite; dpo with precomputed reference
log-probs and kto with `-m slow`.

A save that fills the disk fails the run with one message naming the disk, the bytes and the
fix, and leaves the previous checkpoint to resume from once there is room.

The short version (three kills) and the full disk run with the suite; `pytest -m slow` runs
the long ones (six kills each). Each test prints a `RELIABILITY ...` line with its figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, remount, tmpfs, write_job

pytestmark = pytest.mark.integration
SAVE_STEPS = 2
RECORDS = 30000  # enough that tokenizing them takes a moment (seconds) to be killed in


# --- the job ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conversations(tmp_path_factory) -> Path:
    """Distinct conversations, so tokenizing them takes long enough to be caught at it."""
    base = json.loads((ROOT / "data" / "identity.json").read_text(encoding="utf-8"))
    rows = [
        {"instruction": f"{r['instruction']} ({i})", "input": "", "output": f"{r['output']} #{i}"}
        for i, r in ((i, base[i % len(base)]) for i in range(RECORDS))
    ]
    path = tmp_path_factory.mktemp("data") / "conversations.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Distinct preference pairs, as many as the conversations, for dpo and rm."""
    base = json.loads((ROOT / "data" / "preference.json").read_text(encoding="utf-8"))
    rows = [
        {"instruction": f"{r['instruction']} ({i})", "input": "", "chosen": f"{r['chosen']} #{i}",
         "rejected": f"{r['rejected']} #{i}"}
        for i, r in ((i, base[i % len(base)]) for i in range(RECORDS))
    ]  # fmt: skip
    path = tmp_path_factory.mktemp("data") / "pairs.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> Path:
    """Distinct answers labelled desirable or not, for kto."""
    base = json.loads((ROOT / "data" / "kto.json").read_text(encoding="utf-8"))
    rows = []
    for i in range(RECORDS):
        r = base[i % len(base)]
        question, answer = (t["value"] for t in r["conversations"][:2])
        rows.append({"instruction": f"{question} ({i})", "input": "", "output": f"{answer} #{i}",
                     "kto_tag": r["kto_tag"]})  # fmt: skip
    path = tmp_path_factory.mktemp("data") / "answers.json"
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def job(directory: Path, model: Path, data: Path, name: str, steps: int, procs: int = 1,
        keep: int | None = 2, out: Path | None = None, cache: bool = True, **sections) -> Path:  # fmt: skip
    """Full fine-tuning with AdamW (its state must survive too), no dropout, a fixed data
    order, a checkpoint every SAVE_STEPS steps of which `keep` are kept. `sections` add to the
    job (stage="dpo", preference={...})."""
    return write_job(
        directory / f"{name}.json", model, name=name,
        method={"type": "full"},
        data={"datasets": [{"path": str(data)}], "cutoff_len": 64, "cache": cache},
        training={"max_steps": steps, "save_steps": SAVE_STEPS, "save_total_limit": keep,
                  "logging_steps": 1, "per_device_train_batch_size": 4 // procs, "optim": "adamw_torch",
                  "learning_rate": 1e-3, "lr_scheduler_type": "linear", "seed": 7},
        resources={"gpus": 0, "procs_per_node": procs},
        output={"dir": str(out or directory / "out")}, **sections,
    )  # fmt: skip


def cli(*args: str) -> subprocess.Popen:
    """The real `runner` command, in its own session (so a kill reaches no one else), with
    SIGINT at its default even when the suite runs as a background job."""
    return subprocess.Popen(
        [sys.executable, "-m", "runner.host.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        cwd=ROOT, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def only_run(out: Path, name: str) -> Path:
    (run_dir,) = [p for p in (out / name).iterdir() if p.is_dir()]
    return run_dir


def reference(tmp_path_factory, model: Path, data: Path, steps: int, procs: int, executor: str = "local",
              **sections) -> Path:  # fmt: skip
    """The same job, never interrupted, every checkpoint kept."""
    directory = tmp_path_factory.mktemp(f"reference{procs}{sections.get('stage', '')}")
    spec = job(directory, model, data, "ref", steps, procs, keep=None, **sections)
    proc = cli("submit", str(spec), "--executor", executor)
    out = proc.communicate(timeout=900)[0].decode(errors="replace")
    assert proc.returncode == 0, out[-4000:]
    return only_run(directory / "out", "ref")


# --- processes -------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (ppid, cmdline)
    return found


def trainers(root: int) -> dict[int, int]:
    """rank -> pid of the training processes under `root` (not torchrun's agent)."""
    procs = _processes()
    below, todo = set(), [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in below:
                below.add(pid)
                todo.append(pid)
    ranks = {}
    for pid in below:
        cmdline = procs[pid][1]
        if "runner.train" in cmdline and "torch.distributed.run" not in cmdline:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), 0)
            ranks[rank] = pid
    return ranks


def _count(directory: Path) -> int:
    try:
        return len(os.listdir(directory))
    except OSError:
        return 0


def signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# --- one attempt: submit or resume, watched -------------------------------------------------


class Attempt:
    """A `runner submit`/`runner resume` in the background, its output collected line by line."""

    def __init__(self, *args: str):
        self.proc = cli(*args)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match | None:
        """The first output line matching `pattern`; None if the command ended without one."""
        deadline = time.time() + timeout
        seen = 0
        while time.time() < deadline:
            while seen < len(self.lines):
                if m := re.search(pattern, self.lines[seen]):
                    return m
                seen += 1
            if self.proc.poll() is not None and not self._reader.is_alive() and seen >= len(self.lines):
                return None
            time.sleep(0.002)
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n{self.text[-3000:]}")

    def finish(self, timeout: float = 900) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    def trainers(self, count: int, timeout: float = 60) -> dict[int, int]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = trainers(self.proc.pid)
            if len(found) == count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"expected {count} training process(es) under {self.proc.pid}, found {found}")


@dataclass
class Kill:
    kind: str  # tokenize | save | step | final
    target: int = 0  # save: the first checkpoint step to catch; step: the step to pass
    delay: float = 0.0  # step: seconds after it
    landed: str = ""  # where it really struck


@dataclass
class Report:
    kills: list[Kill] = field(default_factory=list)
    resumes: list[tuple[int, float]] = field(default_factory=list)  # (step, max |Δw| vs reference)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the kills and resumes, the uninterrupted run not counted


def plan(rng: random.Random, kills: int) -> list[Kill]:
    """The first kill while tokenizing, one in a save, the rest drawn (saves and steps); of
    three kills or more the last strikes after the last step's checkpoint, before the model."""
    last = [Kill("final")] if kills >= 3 else []
    rest = [Kill("save")] + [Kill(rng.choice(["save", "step"])) for _ in range(kills - 2 - len(last))]
    rng.shuffle(rest)
    return [Kill("tokenize"), *rest, *last]


def newest_complete(run_dir: Path) -> int:
    """What resume must start from, by the files alone: the highest step with a COMPLETE marker
    whose files all have the sizes it lists (0: none)."""
    best = 0
    for path in (run_dir / "checkpoints").glob("checkpoint-*"):
        marker = path / "COMPLETE"
        if not marker.exists():
            continue
        files = json.loads(marker.read_text())["files"]
        if all((path / f).is_file() and (path / f).stat().st_size == n for f, n in files.items()):
            best = max(best, int(path.name.split("-")[1]))
    return best


def strike(attempt: Attempt, kill: Kill, run_dir: Path | None, out: Path, name: str, procs: int,
           resumed: int, steps: int, rng: random.Random, resumed_attempt: bool) -> bool:  # fmt: skip
    """Carry out `kill` on a running attempt. False when the run ended before it could."""
    if kill.kind == "tokenize":
        if not attempt.wait_for(r"tokenizing (\d+ records|[\d,.]+ MiB of data)"):
            return False
        pids = attempt.trainers(procs)
        signal_all(pids.values(), signal.SIGSTOP)
        time.sleep(0.2)  # let the output already written arrive
        assert not any("training rows" in line for line in attempt.lines), "tokenizing ended before the kill"
        cached = [p for p in (out / ".cache" / "data").glob("*") if ".tmp-" not in p.name]
        assert not cached, "the tokens were cached already"
        kill.landed = "while tokenizing"
    elif kill.kind == "save":
        # A resume removes the saves its predecessor left unfinished before it says where it
        # starts; a new save in .partial is one of this attempt's.
        if resumed_attempt and not attempt.wait_for(r"resuming from|no complete checkpoint"):
            return False
        run_dir = run_dir or only_run(out, name)
        staging = run_dir / "checkpoints" / ".partial"
        kill.target = min(steps, max(2 * SAVE_STEPS, resumed + SAVE_STEPS * rng.randint(1, 2)))
        written = rng.randint(1, 8)  # files of the checkpoint on disk when it strikes
        pids = attempt.trainers(procs)
        while True:
            caught = [p for p in staging.glob("checkpoint-*") if int(p.name.split("-")[1]) >= kill.target]
            if caught and _count(caught[0]) >= written:
                signal_all(pids.values(), signal.SIGSTOP)
                if caught[0].exists():  # still being written: not in place yet
                    n = _count(caught[0])
                    kill.landed = f"saving {caught[0].name} ({n} file{'s' if n != 1 else ''} written)"
                    break
                signal_all(pids.values(), signal.SIGCONT)  # too late: catch the next one
            done = [
                p for p in staging.parent.glob("checkpoint-*") if int(p.name.split("-")[1]) >= kill.target
            ]
            if done:  # that save finished before its files were counted: catch the next one
                kill.target = int(done[0].name.split("-")[1]) + SAVE_STEPS
            if attempt.proc.poll() is not None or kill.target > steps:
                return False
            time.sleep(0.0005)
    elif kill.kind == "final":
        run_dir = run_dir or only_run(out, name)
        done = run_dir / "checkpoints" / f"checkpoint-{steps}" / "COMPLETE"
        pids = attempt.trainers(procs)
        while not done.exists():
            if attempt.proc.poll() is not None:
                return False
            time.sleep(0.0005)
        signal_all(pids.values(), signal.SIGSTOP)
        assert not (run_dir / "results.json").exists()
        kill.landed = f"after checkpoint-{steps}, the last step's, before the model was saved"
    else:
        kill.target = rng.randint(resumed + 1, max(resumed + 1, min(steps - 1, resumed + 4)))
        kill.delay = round(rng.uniform(0, 0.3), 3)
        if not attempt.wait_for(rf"^(\[rank\d\]:)?step {kill.target}/{steps} "):
            return False
        time.sleep(kill.delay)
        pids = attempt.trainers(procs)
        signal_all(pids.values(), signal.SIGSTOP)
        kill.landed = f"{kill.delay:.3f} s after step {kill.target}"
    victim = rng.choice(sorted(pids))
    os.kill(pids[victim], signal.SIGKILL)
    signal_all([p for r, p in pids.items() if r != victim], signal.SIGCONT)
    if procs > 1:
        kill.landed += f", rank {victim}"
    return True


def resume(run_dir: Path, ref: Path, run_id: str, report: Report) -> tuple[Attempt, int]:
    """`runner resume` after a kill: it must start from the newest complete checkpoint (found
    here by the files alone, its weights those of the uninterrupted run's) and name every
    unfinished save it skips, with the reason."""
    resumed = newest_complete(run_dir)
    staged = sorted(p.name for p in (run_dir / "checkpoints" / ".partial").glob("checkpoint-*"))
    if resumed:
        diff = max_diff(weights(run_dir / "checkpoints" / f"checkpoint-{resumed}"),
                        weights(ref / "checkpoints" / f"checkpoint-{resumed}"))  # fmt: skip
        report.resumes.append((resumed, diff))
    attempt = Attempt("resume", run_id)
    said = attempt.wait_for(r"resuming from \S+|no complete checkpoint")
    assert said, attempt.text[-3000:]
    if resumed:
        assert said.group(0).endswith(f"/checkpoints/checkpoint-{resumed}"), (said.group(0), resumed)
    for name in staged:
        line = next((ln for ln in attempt.lines if f"skipping checkpoints/.partial/{name}:" in ln), None)
        assert line and "interrupted" in line, f"{name} skipped silently:\n{attempt.text[-3000:]}"
        report.skipped.append(line.split("skipping ", 1)[1])
    return attempt, resumed


def run_with_kills(tmp_path: Path, model: Path, data: Path, ref: Path, steps: int, procs: int,
                   kills: int, seed: int, **sections) -> Report:  # fmt: skip
    """Submit, kill and resume until the run succeeds; every check along the way."""
    rng = random.Random(seed)
    spec = job(tmp_path, model, data, "faulty", steps, procs, **sections)
    out = tmp_path / "out"
    report = Report(kills=plan(rng, kills))
    attempt, run_dir, resumed = Attempt("submit", str(spec), "--executor", "local"), None, 0
    for kill in report.kills:
        struck = strike(
            attempt, kill, run_dir, out, "faulty", procs, resumed, steps, rng, run_dir is not None
        )
        code = attempt.finish()
        assert struck, f"the run ended before the kill {kill} could strike:\n{attempt.text[-3000:]}"
        assert code != 0, attempt.text[-3000:]
        run_dir = run_dir or only_run(out, "faulty")
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "failed", record
        # What the resume must start from, found here by the files alone, and its weights.
        attempt, resumed = resume(run_dir, ref, record["id"], report)
    code = attempt.finish()
    assert code == 0, attempt.text[-4000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "succeeded", record
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == steps
    assert not (run_dir / "checkpoints" / ".partial").exists()
    assert any(k.kind == "save" and k.landed.startswith("saving") for k in report.kills)
    return report


def timed(report: Report, started: float) -> Report:
    report.seconds = time.time() - started
    return report


def check_and_print(
    report: Report, run_dir: Path, ref: Path, procs: int, model: Path, where: str = ""
) -> None:
    """The final weights equal the uninterrupted run's; so do those of every checkpoint a resume
    started from (the M of `resumes with equal weights: M/M` counts the resumes that had one)."""
    final = weights(run_dir / "model")
    expected = weights(ref / "model")
    worst = max_diff(final, expected)
    base = weights(model)  # the starting model; rm's has no value head yet, which moved from random
    moved = max_diff(*({k: w[k] for k in expected.keys() & base.keys()} for w in (expected, base)))
    equal = sum(1 for _, d in report.resumes if d == 0)
    what = where or f"{procs} process{'es' if procs > 1 else ''}"
    print(f"\nkills ({what}): " + "; ".join(k.landed for k in report.kills))
    print("skipped on resume: " + "; ".join(report.skipped))
    print(
        f"RELIABILITY kills: {len(report.kills)} survived, resumes with equal weights: "
        f"{equal}/{len(report.resumes)} (max |Δw| {max((d for _, d in report.resumes), default=0):.1e}) "
        f"[{what}; final weights max |Δw| {worst:.1e}, training moved them by up to {moved:.1e}]"
        + (f" in {report.seconds:.0f} s" if report.seconds else "")
    )
    assert moved > 5e-4  # training changed the weights: equal weights mean something
    assert worst == 0, f"the resumed run's final weights differ by up to {worst:g}"
    assert equal == len(report.resumes), report.resumes


# --- the tests -------------------------------------------------------------------------------

SHORT, LONG = 8, 24  # steps


@pytest.fixture(scope="module")
def reference_short(tmp_path_factory, tiny_model: Path, conversations: Path) -> Path:
    return reference(tmp_path_factory, tiny_model, conversations, SHORT, 1)


def test_killed_tokenizing_saving_and_after_the_last_checkpoint_then_resumed_to_the_same_weights(
    tmp_path: Path, tiny_model: Path, conversations: Path, reference_short: Path
):
    report = run_with_kills(tmp_path, tiny_model, conversations, reference_short, SHORT, 1, kills=3, seed=1)
    check_and_print(report, only_run(tmp_path / "out", "faulty"), reference_short, 1, tiny_model)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("procs", "zero"), [(1, None), (2, None), (2, 2)], ids=["1proc", "2proc", "2proc-zero2"]
)
def test_six_kills_at_random_points_then_resume_to_the_same_weights(
    procs: int, zero: int | None, tmp_path: Path, tmp_path_factory, tiny_model: Path, conversations: Path
):
    """With ZeRO-2 each rank writes its own optimizer partition into the checkpoint: it is
    marked complete only once both have."""
    distributed = {"distributed": {"deepspeed": {"zero": zero}}} if zero else {}
    ref = reference(tmp_path_factory, tiny_model, conversations, LONG, procs, **distributed)
    report = run_with_kills(tmp_path, tiny_model, conversations, ref, LONG, procs, kills=6,
                            seed=100 + procs + (zero or 0), **distributed)  # fmt: skip
    where = f"{procs} processes, ZeRO-{zero}" if zero else ""
    check_and_print(report, only_run(tmp_path / "out", "faulty"), ref, procs, tiny_model, where=where)


# The preference stages: TRL's trainers with runner's committed checkpoints and resume rules.
# dpo trains against a frozen copy of the model (method full), rm a value head and the model.
PREFERENCE = {
    "dpo": {"stage": "dpo"},
    "rm": {"stage": "rm"},
    "dpo-precomputed": {"stage": "dpo", "preference": {"reference": "precomputed"}},
    "kto": {"stage": "kto"},
}


@pytest.mark.parametrize("variant", ["dpo", "rm"])
def test_a_preference_run_killed_tokenizing_saving_and_after_the_last_checkpoint_resumes_to_the_same_weights(
    variant: str, tmp_path: Path, tmp_path_factory, tiny_model: Path, pairs: Path
):
    sections = PREFERENCE[variant]
    ref = reference(tmp_path_factory, tiny_model, pairs, SHORT, 1, **sections)
    started = time.time()
    report = run_with_kills(tmp_path, tiny_model, pairs, ref, SHORT, 1, kills=3, seed=11, **sections)
    check_and_print(timed(report, started), only_run(tmp_path / "out", "faulty"), ref, 1, tiny_model,
                    where=f"stage {variant}, 1 process")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dpo", "rm", "dpo-precomputed", "kto"])
def test_a_preference_run_killed_six_times_at_random_points_resumes_to_the_same_weights(
    variant: str, tmp_path: Path, tmp_path_factory, tiny_model: Path, pairs: Path, answers: Path
):
    """dpo-precomputed: the reference log-probs are computed again on every resume, from the
    model as loaded, before the checkpoint's weights replace it."""
    sections = PREFERENCE[variant]
    data = answers if variant == "kto" else pairs
    ref = reference(tmp_path_factory, tiny_model, data, LONG, 1, **sections)
    started = time.time()
    report = run_with_kills(tmp_path, tiny_model, data, ref, LONG, 1, kills=6, seed=200 + len(variant),
                            **sections)  # fmt: skip
    check_and_print(timed(report, started), only_run(tmp_path / "out", "faulty"), ref, 1, tiny_model,
                    where=f"stage {variant}, 1 process")  # fmt: skip


def test_a_full_disk_fails_the_save_with_one_message_and_the_run_resumes_once_there_is_room(
    tmp_path: Path, tiny_model: Path, conversations: Path, reference_short: Path
):
    """The output on a small tmpfs: room for one checkpoint, not for two. The second save fails;
    the message names the disk, the bytes and the fix; the previous checkpoint stays complete;
    with the disk grown, `runner resume` ends with the uninterrupted run's weights."""
    size = json.loads((reference_short / "checkpoints" / "checkpoint-2" / "COMPLETE").read_text())["bytes"]
    # the tokenized rows (data.cache: false keeps them in the run directory while it runs): as many
    # bytes as the reference run's cache of the same data
    cache = reference_short.parent.parent / ".cache" / "data"
    rows = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert rows, f"no tokenized rows cached under {cache}"
    small = (
        size * 3 // 2 + rows + (1 << 20)
    )  # one checkpoint, the rows, the run's own files; not a second checkpoint
    with tmpfs(tmp_path / "disk", f"size={small}") as out:
        spec = job(tmp_path, tiny_model, conversations, "full", SHORT, out=out, cache=False)
        first = Attempt("submit", str(spec), "--executor", "local")
        code = first.finish()
        text = first.text
        assert code != 0, text[-3000:]
        run_dir = only_run(out, "full")
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "failed", (record, text[-4000:])
        assert "Traceback" not in text, text[-4000:]
        (line,) = [ln for ln in first.lines if ln.startswith("error:")]
        assert f"the disk holding {run_dir / 'checkpoints'} is full" in line, line
        assert "tmpfs mounted on " + str(out) in line, line
        assert re.search(r"needs about [\d.]+ \w+ \([\d,]+ bytes;", line), line
        assert f"`runner resume {record['id']}` continues from checkpoint-2, which is intact" in line, line
        assert "output.dir" in line and "save_total_limit" in line, line
        assert "is full" in (record["message"] or ""), record
        assert newest_complete(run_dir) == 2
        assert not list(
            (run_dir / "checkpoints" / ".partial").glob("checkpoint-*")
        )  # the space it held is back
        failed_at = re.search(r"saving (checkpoint-\d+)", line).group(1)

        remount(out, "size=256m")
        second = Attempt("resume", record["id"])
        assert second.finish() == 0, second.text[-4000:]
        assert f"resuming from {run_dir / 'checkpoints' / 'checkpoint-2'}" in second.text
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == SHORT
        worst = max_diff(weights(run_dir / "model"), weights(reference_short / "model"))
        print(f"\n{line}")
        print(
            f"RELIABILITY full disk: saving {failed_at} on a {small / 2**20:.1f} MiB tmpfs failed with one "
            f"message (disk, bytes, fix), checkpoint-2 stayed complete; after growing the disk, resumed to "
            f"{SHORT}/{SHORT} steps with equal weights: {int(worst == 0)}/1 (max |Δw| {worst:.1e})"
        )
        assert worst == 0


def test_a_full_disk_when_the_trained_model_is_written_fails_with_one_message_and_resume_writes_it(
    tmp_path: Path, tiny_model: Path, conversations: Path, reference_short: Path
):
    """The disk fills after the last step's checkpoint (the tmpfs is shrunk to what is used
    while the trainer is stopped): writing the model fails with one message; with room again,
    `runner resume` writes it from that checkpoint, training no step more."""
    with tmpfs(tmp_path / "disk", "size=256m") as out:
        spec = job(tmp_path, tiny_model, conversations, "end", SHORT, out=out, cache=False)
        first = Attempt("submit", str(spec), "--executor", "local")
        assert first.wait_for(r"trainable params")
        run_dir = only_run(out, "end")
        last, rotated = (
            run_dir / "checkpoints" / f"checkpoint-{SHORT}",
            run_dir / "checkpoints" / "checkpoint-4",
        )
        pids = first.trainers(1)
        while not ((last / "COMPLETE").exists() and not rotated.exists()):  # saved, older ones rotated out
            assert first.proc.poll() is None, first.text[-3000:]
            time.sleep(0.0005)
        signal_all(pids.values(), signal.SIGSTOP)
        assert not (run_dir / "model").exists()
        used = shutil.disk_usage(out).used
        remount(out, f"size={used + (256 << 10)}")
        signal_all(pids.values(), signal.SIGCONT)
        assert first.finish() != 0, first.text[-3000:]
        assert "Traceback" not in first.text, first.text[-4000:]
        (line,) = [ln for ln in first.lines if ln.startswith("error:")]
        assert f"the disk holding {run_dir / 'model'} is full" in line, line
        assert "tmpfs mounted on " + str(out) in line and "output.dir" in line, line
        model_bytes = (reference_short / "model" / "model.safetensors").stat().st_size
        assert f"needs about {model_bytes / 2**20:.1f} MiB ({model_bytes:,} bytes" in line, line
        assert (
            f"`runner resume {run_dir.name}` writes it from checkpoint-{SHORT} without training again" in line
        )
        assert not (run_dir / "model").exists()  # no half-written model left to be mistaken for one

        remount(out, "size=256m")
        second = Attempt("resume", run_dir.name)
        assert second.finish() == 0, second.text[-4000:]
        assert f"resuming from {last}" in second.text
        assert not any(re.match(rf"step {SHORT + 1}/", ln) for ln in second.lines), second.text[-3000:]
        assert json.loads((run_dir / "results.json").read_text())["global_step"] == SHORT
        worst = max_diff(weights(run_dir / "model"), weights(reference_short / "model"))
        print(f"\n{line}")
        print(
            f"RELIABILITY full disk: writing the trained model after checkpoint-{SHORT} failed with one "
            f"message (disk, bytes, fix); after growing the disk, resume wrote it without training: "
            f"equal weights 1/1 (max |Δw| {worst:.1e})"
        )
        assert worst == 0
