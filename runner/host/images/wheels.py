"""`runner wheels IMAGE`: every wheel the lock needs, for the target platform, with a manifest.

Filled on the connected side; checked with `--verify` anywhere, with no network. Packages
published only as sdists are built into wheels here so the image build never compiles or
downloads anything, with one exception: an image that compiles DeepSpeed's CUDA ops keeps
deepspeed's sdist (hash-checked against the lock), which its build compiles with the base's nvcc.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runner.core.errors import RunnerError
from runner.core.jobspec.image import ImageSpec
from runner.host.images import distmeta, licenses
from runner.host.images.distmeta import SDIST, platform_tags
from runner.host.images.distmeta import dist_project as wheel_project
from runner.host.images.lock import check_seal, lock_path, normalize, parse_lock

MANIFEST = "manifest.json"
_NO_MATCH = re.compile(r"No matching distribution found for ([A-Za-z0-9._-]+)")


class WheelhouseError(RunnerError):
    pass


def wheel_dir(root: Path, spec: ImageSpec) -> Path:
    return root / spec.name


def kept_as_sdist(spec: ImageSpec) -> set[str]:
    """Projects the wheelhouse holds as sdists: deepspeed, where the image compiles its ops."""
    return {"deepspeed"} if spec.prebuilt_ops else set()


def fill(spec: ImageSpec, images_dir: Path, root: Path, find_links: list[str] | None = None) -> Path:
    """Download (and build, for sdists) every locked package into root/NAME/; write the manifest."""
    lock_file = lock_path(images_dir, spec)
    if not lock_file.exists():
        raise WheelhouseError(f"{lock_file} does not exist; run `runner lock {spec.name}` first")
    if broken := check_seal(lock_file, spec.name):
        raise WheelhouseError(broken)
    out = wheel_dir(root, spec)
    out.mkdir(parents=True, exist_ok=True)
    entries = parse_lock(lock_file.read_text(encoding="utf-8"))
    sdists: list[str] = []
    binary = dict(entries)
    for _ in range(len(entries) + 1):
        missing = _download(binary, out, spec, find_links, binary_only=True)
        if missing is None:
            break
        sdists.append(missing)
        binary.pop(missing)
    as_sdist = [n for n in sdists if n in kept_as_sdist(spec)]
    to_build = [n for n in sdists if n not in as_sdist]
    kept = _built_before(out, {n: entries[n]["version"] for n in to_build})
    todo = [entries[n] for n in to_build if n not in {wheel_project(f)[0] for f in kept}]
    built = kept + (_build_sdists(todo, out, find_links, spec) if todo else [])
    if as_sdist:
        _download_sdists([entries[n] for n in as_sdist], out, find_links)
    # Files an earlier lock pinned (another version, a package dropped since) would be installed
    # beside this lock's, or conflict with them: the wheelhouse holds this lock's files alone.
    wanted = {(name, entry["version"]) for name, entry in entries.items()}
    for stale in sorted(dists(out)):
        project = wheel_project(stale.name)
        if project not in wanted or (project[0] in as_sdist) != stale.name.endswith(SDIST):
            stale.unlink()
    manifest = write_manifest(spec, lock_file, out, built)
    (out / "requirements.txt").write_text(install_requirements(out), encoding="utf-8")
    (out / "sdists.txt").write_text(install_requirements(out, sdists=True), encoding="utf-8")
    return manifest


def dists(folder: Path) -> list[Path]:
    """The wheels and the sdists kept in a wheelhouse."""
    return sorted([*folder.glob("*.whl"), *folder.glob(f"*{SDIST}")])


def _download(
    entries: dict, out: Path, spec: ImageSpec, links: list[str] | None, binary_only: bool
) -> str | None:
    """pip download; returns the normalized name of a package without a wheel, else None."""
    tmp = tempfile.TemporaryDirectory()
    req = Path(tmp.name) / "requirements.txt"
    req.write_text("\n".join(e["text"] for e in entries.values()) + "\n", encoding="utf-8")
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "-r", str(req),
            "-d", str(out), "--python-version", spec.python, "--implementation", "cp",
            "--only-binary=:all:", "--progress-bar", "off", "--quiet"]  # fmt: skip
    for tag in platform_tags(spec.platform):
        argv += ["--platform", tag]
    for link in links or []:
        argv += ["--find-links", link]
    proc = subprocess.run(argv, capture_output=True, text=True)
    tmp.cleanup()
    if proc.returncode == 0:
        return None
    m = _NO_MATCH.search(proc.stderr)
    if m and normalize(m[1]) in entries:
        return normalize(m[1])
    raise WheelhouseError(f"downloading wheels for image {spec.name} failed:\n{proc.stderr.strip()[-3000:]}")


def _built_before(out: Path, wanted: dict[str, str]) -> list[str]:
    """Wheels an earlier fill built from these sdists (name -> version), still intact."""
    try:
        files = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return []
    return [
        name for name, info in files.items()
        if info.get("built_from_sdist") and wanted.get(wheel_project(name)[0]) == wheel_project(name)[1]
        and (out / name).exists() and sha256(out / name) == info["sha256"]
    ]  # fmt: skip


def _download_sdists(entries: list[dict], dest: Path, links: list[str] | None) -> None:
    """pip download the hash-checked sdists of `entries` into dest."""
    dest.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("\n".join(e["text"] for e in entries) + "\n", encoding="utf-8")
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--no-binary", ":all:",
                "-r", str(req), "-d", str(dest), "--quiet"]  # fmt: skip
        for link in links or []:
            argv += ["--find-links", link]
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise WheelhouseError(
            f"downloading the sdists of {', '.join(e['name'] for e in entries)} failed:\n{proc.stderr[-3000:]}"
        )


def _build_sdists(entries: list[dict], out: Path, links: list[str] | None, spec: ImageSpec) -> list[str]:
    """Fetch the hash-checked sdists, then build wheels: inside the base image when an engine
    holds it (compiled parts then match the image), else on this machine."""
    sdists = out / ".sdists"
    _download_sdists(entries, sdists, links)
    archives = sorted(sdists.iterdir())
    docker = _engine_with(spec.base)
    # deepspeed's setup.py imports torch: no build isolation, and its ops are left to JIT.
    if docker is not None:
        script = (f"{shlex.quote(spec.python_bin)} -m pip wheel --no-deps --no-build-isolation --no-index "
                  f"-w /out " + " ".join(f"/sdists/{shlex.quote(a.name)}" for a in archives))  # fmt: skip
        code, log = docker.run(
            spec.base, ["sh", "-c", script], network_mode="none", environment={"DS_BUILD_OPS": "0"},
            volumes={str(sdists): {"bind": "/sdists", "mode": "ro"}, str(out): {"bind": "/out", "mode": "rw"}},
        )  # fmt: skip
        if code != 0:
            raise WheelhouseError(f"building wheels from sdists inside {spec.base} failed:\n{log[-3000:]}")
    else:
        argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(out), "--quiet", *map(str, archives)]  # fmt: skip
        proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        if proc.returncode != 0:
            raise WheelhouseError(f"building wheels from sdists failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(sdists)
    wanted = {(normalize(e["name"]), e["version"]) for e in entries}
    return sorted(p.name for p in out.glob("*.whl") if wheel_project(p.name) in wanted)


def _engine_with(image: str):
    """A Docker client when an engine is up and holds `image`; None otherwise."""
    from runner.host.docker_api import Docker, DockerUnavailable

    try:
        docker = Docker()
    except DockerUnavailable:
        return None
    return docker if docker.image_id(image) else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(spec: ImageSpec, lock_file: Path, out: Path, built: list[str] = ()) -> Path:
    """sha256 and size of every wheel and kept sdist; `built` marks wheels made here from sdists."""
    files = {
        p.name: {
            "sha256": sha256(p),
            "size": p.stat().st_size,
            **({"built_from_sdist": True} if p.name in built else {}),
        }
        for p in dists(out)
    }
    manifest = {"image": spec.name, "lock_sha256": sha256(lock_file), "files": files}
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def verify(spec: ImageSpec, images_dir: Path, root: Path) -> list[str]:
    """Problems with the wheelhouse against the lock and the manifest; empty means complete."""
    lock_file = lock_path(images_dir, spec)
    out = wheel_dir(root, spec)
    if not lock_file.exists():
        return [f"{lock_file} does not exist; run `runner lock {spec.name}`"]
    if not (out / MANIFEST).exists():
        return [f"{out / MANIFEST} does not exist; run `runner wheels {spec.name}`"]
    if broken := check_seal(lock_file, spec.name):
        return [broken]  # nothing it says can be trusted
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    problems = []
    if manifest.get("lock_sha256") != sha256(lock_file):
        problems.append(
            f"{out} was filled for another version of {lock_file}; run `runner wheels {spec.name}` again"
        )
    have: dict[str, list[Path]] = {}
    for p in dists(out):
        have.setdefault(wheel_project(p.name)[0], []).append(p)
    for name, e in parse_lock(lock_file.read_text(encoding="utf-8")).items():
        files = [p for p in have.get(name, []) if wheel_project(p.name)[1] == e["version"]]
        if name in kept_as_sdist(spec):
            files = [p for p in files if p.name.endswith(SDIST)]
            if not files:
                problems.append(f"missing sdist: {e['name']}=={e['version']} (its ops are compiled in the "
                                f"image; not in {out}); run `runner wheels {spec.name}`")  # fmt: skip
                continue
        if not files:
            problems.append(f"missing wheel: {e['name']}=={e['version']} (not in {out})")
            continue
        for p in files:
            digest = sha256(p)
            recorded = manifest["files"].get(p.name, {}).get("sha256")
            if recorded != digest:
                problems.append(f"{p.name}: sha256 {digest[:12]}... differs from the manifest")
            elif digest not in e["hashes"] and not manifest["files"][p.name].get("built_from_sdist"):
                problems.append(f"{p.name}: sha256 {digest[:12]}... is not a hash the lock allows")
    return problems


def install_requirements(out: Path, sdists: bool = False) -> str:
    """A requirements file pinning every wheel (or, with sdists, every kept sdist) of the wheelhouse
    to its exact sha256.

    The image installs from this with --require-hashes: it names exactly the verified
    files, including wheels built here from sdists (whose hashes no index publishes).
    """
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    lines = []
    for filename, info in sorted(manifest["files"].items()):
        if filename.endswith(SDIST) == sdists:
            name, version = filename.removesuffix(SDIST).split("-")[:2]
            lines.append(f"{name}=={version} --hash=sha256:{info['sha256']}")
    return "\n".join(lines) + "\n" if lines else ""


def judge_licenses(spec: ImageSpec, root: Path) -> list[licenses.Judged]:
    """The license of every wheel and kept sdist of the wheelhouse, read from the file's own
    metadata, under the spec's policy (the wheelhouse verified first: see `verify`)."""
    packages = []
    for path in dists(wheel_dir(root, spec)):
        meta = distmeta.from_file(path)
        name, version = wheel_project(path.name)
        packages.append((meta["Name"] or name, meta["Version"] or version, meta))
    return licenses.judge_all(spec.licenses, packages)
