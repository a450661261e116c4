"""Fault injection, docker tier: the training container is killed (`docker kill`, SIGKILL) at
seeded random points (while it tokenizes, in the middle of a checkpoint's save, between steps),
`runner resume` starts a new container after each kill, and the run ends with exactly the
weights of an uninterrupted containerized run. Both run with `pytest -m slow` (the short one
kills twice); each prints a `RELIABILITY ...` line."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from tests.integration.test_faults import (
    SAVE_STEPS,
    Attempt,
    Kill,
    Report,
    check_and_print,
    conversations,  # noqa: F401  (a fixture)
    job,
    only_run,
    reference,
    resume,
)

# Slow: a container starts for every attempt. The integration tier's short version runs by default.
pytestmark = [pytest.mark.docker, pytest.mark.slow]
STEPS = 8


def container_of(run_dir: Path, attempt: Attempt, timeout: float = 120) -> str:
    """The id of the attempt's container, once the record names it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        record = json.loads(path.read_text()) if (path := run_dir / "run.json").exists() else {}
        if record.get("container") and record["status"] == "running":
            return record["container"]
        assert attempt.proc.poll() is None, attempt.text[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"no running container recorded in {run_dir}")


def strike(docker, attempt: Attempt, kill: Kill, run_dir: Path, out: Path, resumed: int,
           rng: random.Random, resumed_attempt: bool) -> bool:  # fmt: skip
    """`docker kill` the attempt's container at `kill`'s point; False if it ended first."""
    container = container_of(run_dir, attempt)
    staging = run_dir / "checkpoints" / ".partial"
    if kill.kind == "tokenize":
        if not attempt.wait_for(r"tokenizing \d+ records"):
            return False
        docker.api.kill(container)
    elif kill.kind == "save":
        if resumed_attempt and not attempt.wait_for(r"resuming from|no complete checkpoint"):
            return False
        kill.target = min(STEPS, max(2 * SAVE_STEPS, resumed + SAVE_STEPS * rng.randint(1, 2)))
        while True:
            caught = [p for p in staging.glob("checkpoint-*") if int(p.name.split("-")[1]) >= kill.target]
            if caught and any(caught[0].iterdir()):
                docker.api.kill(container)
                kill.target = int(caught[0].name.split("-")[1])
                break
            if attempt.proc.poll() is not None:
                return False
            time.sleep(0.0005)
    else:
        kill.target = rng.randint(resumed + 1, max(resumed + 1, min(STEPS - 1, resumed + 3)))
        kill.delay = round(rng.uniform(0, 0.3), 3)
        if not attempt.wait_for(rf"^step {kill.target}/{STEPS} "):
            return False
        time.sleep(kill.delay)
        docker.api.kill(container)
        kill.landed = f"{kill.delay:.3f} s after step {kill.target}"
    return True


def run_with_container_kills(docker, image: str, tmp_path: Path, model: Path, data: Path, ref: Path,
                             kills: list[Kill], seed: int) -> Report:  # fmt: skip
    """`image`: the image this suite built, by its content tag (the `cpu` name's `latest` tag
    may be moved by another build meanwhile)."""
    rng = random.Random(seed)
    spec = job(tmp_path, model, data, "faulty", STEPS, image=image)
    out = tmp_path / "out"
    report = Report(kills=kills)
    attempt, resumed, retries = Attempt("submit", str(spec)), 0, 3
    run_dir = None
    i = 0
    while i < len(kills):
        kill = kills[i]
        while run_dir is None and not (out / "faulty").is_dir():
            time.sleep(0.05)
        run_dir = run_dir or only_run(out, "faulty")
        struck = strike(docker, attempt, kill, run_dir, out, resumed, rng, i > 0)
        code = attempt.finish()
        assert struck, f"the run ended before the kill {kill} could strike:\n{attempt.text[-3000:]}"
        assert code != 0, attempt.text[-3000:]
        record = json.loads((run_dir / "run.json").read_text())
        assert record["status"] == "failed" and record["exit_code"] == 137, record
        # Where the kill really struck, now that the container is gone.
        if kill.kind == "tokenize":
            done = any("training rows" in line for line in attempt.lines)
            kill.landed = "just after tokenizing" if done else "while tokenizing"
        elif kill.kind == "save":
            name = f"checkpoint-{kill.target}"
            if (run_dir / "checkpoints" / ".partial" / name).exists():
                kill.landed = f"saving {name}"
            else:
                kill.landed = f"just after {name}'s save"
                if retries:  # the save outran the kill: try again at a later one
                    retries -= 1
                    kills.insert(i + 1, Kill("save"))
        attempt, resumed = resume(run_dir, ref, record["id"], report)
        i += 1
    assert attempt.finish() == 0, attempt.text[-4000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == STEPS
    assert any(k.landed.startswith("saving") for k in report.kills), [k.landed for k in report.kills]
    return report


@pytest.fixture(scope="module")
def reference_in_container(cpu_image, tmp_path_factory, tiny_model: Path, conversations: Path) -> Path:  # noqa: F811
    return reference(
        tmp_path_factory, tiny_model, conversations, STEPS, 1, executor="docker", image=cpu_image.tag
    )


def test_container_killed_while_tokenizing_and_saving_resumes_to_the_same_weights(
    docker,
    cpu_image,
    reference_in_container: Path,
    tmp_path: Path,
    tiny_model: Path,
    conversations: Path,  # noqa: F811
):
    kills = [Kill("tokenize"), Kill("save")]
    report = run_with_container_kills(docker, cpu_image.tag, tmp_path, tiny_model, conversations,
                                      reference_in_container, kills, seed=11)  # fmt: skip
    check_and_print(report, only_run(tmp_path / "out", "faulty"), reference_in_container, 1, tiny_model,
                    where="containers")  # fmt: skip


def test_container_killed_five_times_resumes_to_the_same_weights(
    docker,
    cpu_image,
    reference_in_container: Path,
    tmp_path: Path,
    tiny_model: Path,
    conversations: Path,  # noqa: F811
):
    rng = random.Random(12)
    rest = [Kill("save")] + [Kill(rng.choice(["save", "step"])) for _ in range(3)]
    rng.shuffle(rest)
    report = run_with_container_kills(docker, cpu_image.tag, tmp_path, tiny_model, conversations,
                                      reference_in_container, [Kill("tokenize"), *rest], seed=12)  # fmt: skip
    check_and_print(report, only_run(tmp_path / "out", "faulty"), reference_in_container, 1, tiny_model,
                    where="containers")  # fmt: skip
