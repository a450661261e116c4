from __future__ import annotations

from runner.core.rundir import RunDir, RunRecord, latest_run, loss_summary, read_record


def test_run_dirs_are_never_reused(tmp_path):
    dirs = {RunDir.create(tmp_path, "job").path for _ in range(30)}
    assert len(dirs) == 30
    assert all(d.parent == tmp_path / "job" for d in dirs)


def test_record_round_trip_and_latest(tmp_path):
    for status in ("succeeded", "failed"):
        d = RunDir.create(tmp_path, "job").path
        RunRecord(id=d.name, name="job", run_dir=str(d), spec_file="j.yaml", status=status).save()
    assert read_record(d).status == "failed"
    assert latest_run(tmp_path, "job").status == "succeeded"


def test_loss_summary(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n{"step": 9, "loss": 0.5}\n')
    assert loss_summary(tmp_path) == "loss 5.0000 (step 1) -> 0.5000 (step 9), lowest 0.5000"


def test_failures_are_explained(tmp_path):
    from runner.core.rundir import explain_failure

    (tmp_path / "train.log").write_text(
        "...\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    )
    assert "per_device_train_batch_size" in explain_failure(tmp_path, 1)
    assert "gradient_checkpointing" in explain_failure(tmp_path, 1)
    (tmp_path / "train.log").write_text("fine\n")
    assert "resume" in explain_failure(tmp_path, 143)
    assert "SIGKILL" in explain_failure(tmp_path, 137)
    assert explain_failure(tmp_path, 1) is None
