"""Checkpoints that a crash cannot leave half-written where `runner resume` would look.

The Trainer writes a checkpoint into checkpoints/.partial/checkpoint-N. When every process has
finished writing its part (ZeRO partitions, per-rank RNG states), the main process flushes every
file to the disk, writes the COMPLETE marker (the list of files and their sizes, itself fsync'd)
and renames the directory to checkpoints/checkpoint-N. Resuming takes the newest checkpoint
whose marker is there and whose files still have the sizes it lists; it says which it skipped.

`committed` is that protocol around one save; runner/train/compat.py hooks it into the Trainer's
own save, for every stage's trainer alike.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.core import atomic
from runner.core.errors import RunError

log = logging.getLogger(__name__)
PREFIX = "checkpoint-"
STAGING = ".partial"
MARKER = "COMPLETE"
# What the Trainer writes last; a checkpoint with it but without a marker was written before
# markers were kept (runner's own checkpoints from an older version).
LEGACY_LAST = "trainer_state.json"


def step_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix(PREFIX))
    except ValueError:
        return -1


def commit(staged: Path, final: Path, world_size: int) -> None:
    """Make `staged` durable, mark it complete and move it into place (main process only,
    after every process finished writing into it)."""
    atomic.fsync_tree(staged)
    files = {str(p.relative_to(staged)): p.stat().st_size for p in sorted(staged.rglob("*")) if p.is_file()}
    marker = {"step": step_of(final), "world_size": world_size, "files": files,
              "bytes": sum(files.values()), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
    atomic.write_text(staged / MARKER, json.dumps(marker, indent=1) + "\n")
    if final.exists():  # a damaged checkpoint of the same step, skipped when resuming: replace it
        old = staged.parent / f"{final.name}.replaced"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(staged, final)
    atomic.fsync_dir(final.parent)
    atomic.fsync_dir(staged.parent)


@dataclass(frozen=True)
class Ranks:
    """Who does what in a save: `main` commits (one process of the run), `local_main` prepares
    and commits on its own machine (the first process of each), all `world_size` wait together."""

    main: bool
    local_main: bool
    world_size: int

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


@contextlib.contextmanager
def committed(root: Path, step: int, ranks: Ranks, keep: int | None) -> Iterator[Path]:
    """Around every process's save of step `step`: yields the directory to save checkpoint-N
    into (root/.partial), then, once every process has written its part (ZeRO partitions, RNG
    states), the main process commits it and only then rotates out all but the newest `keep`,
    so a crash always leaves one. A save that fails for want of space raises one RunError."""
    name = f"{PREFIX}{step}"
    staged = root / STAGING / name
    if ranks.local_main:
        shutil.rmtree(staged, ignore_errors=True)  # left by an interrupted save of this step
        staged.parent.mkdir(parents=True, exist_ok=True)
    ranks.barrier()
    try:
        yield staged.parent
        ranks.barrier()  # every rank's files are written
        if ranks.main:
            commit(staged, root / name, ranks.world_size)
    except Exception as e:
        if ranks.main and is_disk_full(e, root):
            raise disk_full_error(root, staged, root.parent.name) from None
        raise
    if ranks.main:
        log.info("checkpoint %s saved", name)
        rotate(root, keep)
    if ranks.world_size > 1:
        ranks.barrier()
        # Another machine whose disk is its own (no shared storage): its ranks' part of the
        # checkpoint is still staged there; its first process commits it the same way.
        if ranks.local_main and not ranks.main and staged.exists():
            commit(staged, root / name, ranks.world_size)
            rotate(root, keep)
    ranks.barrier()  # no rank goes on before the checkpoint is in place


def why_incomplete(path: Path) -> str | None:
    """None for a complete checkpoint; else what is wrong with it, in words."""
    marker = path / MARKER
    if not marker.exists():
        if path.parent.name == STAGING:
            return "its save was interrupted (no COMPLETE marker)"
        if (path / LEGACY_LAST).exists():
            return None  # an older runner's checkpoint, complete by that version's rule
        return "no COMPLETE marker: its save did not finish"
    try:
        files = json.loads(marker.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its COMPLETE marker is unreadable ({e})"
    for name, size in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != size:
            return f"{name} has {f.stat().st_size} bytes, its marker says {size}"
    return None


def latest_checkpoint(checkpoints: Path, quiet: bool = False) -> Path | None:
    """The newest complete checkpoint. Every newer or unfinished one passed over is logged
    with the reason (unless `quiet`: the other ranks of a distributed run)."""
    found = list(checkpoints.glob(f"{PREFIX}*")) + list((checkpoints / STAGING).glob(f"{PREFIX}*"))
    found = [p for p in found if p.is_dir() and step_of(p) >= 0]
    found.sort(key=lambda p: (step_of(p), p.parent.name != STAGING), reverse=True)
    for path in found:
        reason = why_incomplete(path)
        if reason is None:
            return path
        if not quiet:
            log.warning("skipping %s: %s", path.relative_to(checkpoints.parent), reason)
    return None


def rotate(checkpoints: Path, limit: int | None) -> None:
    """Keep the newest `limit` complete checkpoints; older ones go, incomplete ones too."""
    if not limit or limit <= 0:
        return
    done = sorted((p for p in checkpoints.glob(f"{PREFIX}*") if p.is_dir() and step_of(p) >= 0), key=step_of)
    complete = [p for p in done if why_incomplete(p) is None]
    if not complete:
        return
    newest = complete[-1]
    keep = set(complete[-limit:])
    for p in done:
        if p not in keep and step_of(p) < step_of(newest):
            shutil.rmtree(p, ignore_errors=True)


def clear_staging(checkpoints: Path) -> None:
    shutil.rmtree(checkpoints / STAGING, ignore_errors=True)


# --- a full disk -----------------------------------------------------------------------------


def is_disk_full(error: BaseException, checkpoints: Path) -> bool:
    """Whether a failed save failed for want of space: ENOSPC anywhere in the chain, or less
    room left than a checkpoint takes (torch reports a short write as "unexpected pos")."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(s in str(seen) for s in ("No space left on device", "StorageFull", "Disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    if not any(s in str(error) for s in ("unexpected pos", "file write failed", "PytorchStreamWriter")):
        return False  # not a short write: some other failure, reported as it is
    try:
        free = shutil.disk_usage(checkpoints).free
    except OSError:
        return False
    return free < max(1 << 20, _bytes_of(latest_checkpoint(checkpoints, quiet=True)))


def _bytes_of(checkpoint: Path | None) -> int:
    try:
        return json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))["bytes"]
    except (TypeError, OSError, ValueError, KeyError):
        return 0


def disk_full_error(checkpoints: Path, staged: Path, run_id: str) -> RunError:
    """One message that names the disk, the bytes and the fix; the unfinished save is removed
    first (it holds the space another attempt needs)."""
    written = sum(p.stat().st_size for p in staged.rglob("*") if p.is_file()) if staged.exists() else 0
    shutil.rmtree(staged, ignore_errors=True)
    previous = latest_checkpoint(checkpoints)
    needed = max(written, _bytes_of(previous))
    usage = shutil.disk_usage(checkpoints)
    mount, device = mount_of(checkpoints)
    then = (f"continues from {previous.name}, which is intact" if previous is not None
            else "starts over: no checkpoint was completed")  # fmt: skip
    return RunError(
        f"the disk holding {checkpoints} is full ({device} mounted on {mount}: {_size(usage.free)} "
        f"free of {_size(usage.total)}): saving {staged.name} needs about {_size(needed)} "
        f"({needed:,} bytes; the {_size(written)} written before it failed were removed). Make room "
        f"(free space on {mount}, lower training.save_total_limit, or set output.dir to a larger "
        f"disk), then `runner resume {run_id}` {then}."
    )


def model_disk_full_error(out: Path, checkpoints: Path, run_id: str) -> RunError:
    """The trained model or adapter did not fit: the same kind of message. The last step's
    checkpoint is complete, so a resume writes it without training again."""
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out.exists() else 0
    shutil.rmtree(out, ignore_errors=True)
    previous = latest_checkpoint(checkpoints, quiet=True)
    usage = shutil.disk_usage(out.parent)
    mount, device = mount_of(out.parent)
    then = (f"writes it from {previous.name} without training again" if previous is not None
            else "starts over: no checkpoint was completed")  # fmt: skip
    needed = max(written, _weights_bytes(previous))
    return RunError(
        f"the disk holding {out} is full ({device} mounted on {mount}: {_size(usage.free)} free of "
        f"{_size(usage.total)}): writing the trained {out.name} needs about {_size(needed)} "
        f"({needed:,} bytes, its weights' size in the last checkpoint; the {_size(written)} written "
        f"were removed). Make room (free space on {mount}, or set output.dir to a larger disk), then "
        f"`runner resume {run_id}` {then}."
    )


def _weights_bytes(checkpoint: Path | None) -> int:
    """What the model's (or adapter's) weight files take in a checkpoint, by its marker."""
    try:
        files = json.loads((checkpoint / MARKER).read_text(encoding="utf-8"))["files"]
    except (TypeError, OSError, ValueError, KeyError):
        return 0
    return sum(n for f, n in files.items() if f.startswith(("model", "adapter_model", "pytorch_model")))


def mount_of(path: Path) -> tuple[str, str]:
    """The mount point holding `path` and its device (or filesystem type)."""
    path = Path(os.path.realpath(path))
    best, device = "/", "?"
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                dev, point, fstype = line.split()[:3]
                point = point.replace("\\040", " ")
                if (path == Path(point) or Path(point) in path.parents) and len(point) >= len(best):
                    best, device = point, dev if dev not in ("none", fstype) else fstype
    except OSError:
        pass
    return best, device


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
