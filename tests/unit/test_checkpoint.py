"""Which checkpoint a resume takes, and why it passes over the others; the record's atomic write."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from runner.core import atomic
from runner.train import checkpoint


def _save(root: Path, step: int, staged: bool = False, commit: bool = True) -> Path:
    """A checkpoint as the trainer leaves it: files written into .partial, then committed."""
    staging = root / checkpoint.STAGING / f"checkpoint-{step}"
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(b"w" * (100 + step))
    (staging / "optimizer.pt").write_bytes(b"o" * 50)
    if staged or not commit:
        return staging
    checkpoint.commit(staging, root / f"checkpoint-{step}", world_size=1)
    return root / f"checkpoint-{step}"


def test_the_newest_complete_checkpoint_is_taken_and_each_newer_one_is_named_with_its_reason(
    tmp_path, caplog
):
    root = tmp_path / "checkpoints"
    _save(root, 2)
    four = _save(root, 4)
    six = _save(root, 6)
    (six / "optimizer.pt").write_bytes(b"short")  # truncated after the fact
    eight = _save(root, 8)
    (eight / "model.safetensors").unlink()
    _save(root, 10, staged=True)  # a save cut short
    unmarked = root / "checkpoint-12"  # a directory without a marker
    unmarked.mkdir()
    (unmarked / "model.safetensors").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        assert checkpoint.latest_checkpoint(root) == four
    said = caplog.text
    assert "skipping checkpoints/checkpoint-12: no COMPLETE marker" in said
    assert "skipping checkpoints/.partial/checkpoint-10: its save was interrupted" in said
    assert "skipping checkpoints/checkpoint-8: model.safetensors is missing" in said
    assert "skipping checkpoints/checkpoint-6: optimizer.pt has 5 bytes, its marker says 50" in said
    assert "checkpoint-2" not in said and "checkpoint-4" not in said


def test_a_marker_lists_every_file_and_the_checkpoint_is_in_place_only_once_marked(tmp_path):
    root = tmp_path / "checkpoints"
    done = _save(root, 3)
    marker = json.loads((done / checkpoint.MARKER).read_text())
    assert marker["step"] == 3 and marker["files"] == {"model.safetensors": 103, "optimizer.pt": 50}
    assert marker["bytes"] == 153
    assert not (root / checkpoint.STAGING / "checkpoint-3").exists()
    assert checkpoint.why_incomplete(done) is None


def test_an_older_runners_checkpoint_with_its_trainer_state_still_resumes(tmp_path):
    old = tmp_path / "checkpoints" / "checkpoint-5"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}")
    assert checkpoint.latest_checkpoint(tmp_path / "checkpoints") == old


def test_nothing_complete_means_none(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 2, staged=True)
    assert checkpoint.latest_checkpoint(root) is None
    assert checkpoint.latest_checkpoint(tmp_path / "absent") is None


def test_rotation_keeps_the_newest_complete_ones(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        _save(root, step)
    broken = root / "checkpoint-1"
    broken.mkdir()
    checkpoint.rotate(root, 2)
    assert sorted(p.name for p in root.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def test_a_commit_replaces_a_damaged_checkpoint_of_the_same_step(tmp_path):
    root = tmp_path / "checkpoints"
    damaged = root / "checkpoint-4"
    damaged.mkdir(parents=True)
    (damaged / "junk").write_text("x")
    done = _save(root, 4)
    assert not (done / "junk").exists() and checkpoint.why_incomplete(done) is None


def test_atomic_write_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "run.json"
    atomic.write_text(target, "old\n")
    atomic.write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_full_disk_is_told_apart_from_other_save_failures(tmp_path):
    import errno

    full = OSError(errno.ENOSPC, "No space left on device")
    assert checkpoint.is_disk_full(full, tmp_path)
    try:
        try:
            raise full
        except OSError as e:
            raise RuntimeError("Error while serializing") from e
    except RuntimeError as wrapped:
        assert checkpoint.is_disk_full(wrapped, tmp_path)
    assert checkpoint.is_disk_full(RuntimeError("IoError(Os { code: 28, kind: StorageFull })"), tmp_path)
    # A short write with plenty of room left is not a full disk; neither is any other error.
    assert not checkpoint.is_disk_full(RuntimeError("unexpected pos 1831488 vs 1831376"), tmp_path)
    assert not checkpoint.is_disk_full(ValueError("bad tensor"), tmp_path)
