"""`runner lock IMAGE`: pinned, hashed requirements resolved for the image's platform.

Resolution is done by uv for the target python and platform, not the host's. torch is pinned
to the version the image uses; when the base image already carries torch, torch and what
only torch needs are left out of the lock, so an install never replaces the base's CUDA build.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from runner.core.errors import RunnerError
from runner.core.jobspec.compat import torch_outside
from runner.core.jobspec.image import ImageSpec
from runner.host.images import distmeta, licenses
from runner.host.images.distmeta import normalize

EXTRA_REQUIREMENTS = {
    "trl": "trl>=1.0",
    "deepspeed": "deepspeed>=0.16",
    "bitsandbytes": "bitsandbytes>=0.45",
    "flash-attn": "flash-attn>=2.7",
    "liger-kernel": "liger-kernel>=0.6",
}
REQUIREMENTS_IN = "requirements.in"  # the name the lock's `# via -r` lines show
_BLOCK = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)", re.M)


class LockError(RunnerError):
    pass


def requirements(spec: ImageSpec) -> list[str]:
    """What the image must carry: runner's own needs (host and training side) and the extras."""
    reqs = []
    for line in metadata.requires("runner") or []:
        req, _, marker = line.partition(";")
        if not marker or 'extra == "train"' in marker.replace("'", '"'):
            reqs.append(req.strip())
    reqs = [r for r in reqs if not re.match(r"^torch\b", r)]
    reqs.append(f"torch=={spec.torch}")
    reqs += [EXTRA_REQUIREMENTS[e] for e in spec.extras]
    if spec.prebuilt_ops:
        reqs.append("ninja")  # DeepSpeed's op build compiles in parallel with it, serially without
    return reqs + list(spec.requirements)


def lock_path(images_dir: Path, spec: ImageSpec) -> Path:
    return images_dir / f"{spec.name}.lock"


def spec_hash(spec: ImageSpec) -> str:
    # The license policy decides what may be built, not what the image is made of.
    return hashlib.sha256(spec.model_dump_json(exclude={"licenses"}).encode()).hexdigest()[:16]


def lock(
    spec: ImageSpec, images_dir: Path, find_links: list[str] | None = None, wheels_root: Path | None = None
) -> Path:
    """Resolve and write images/NAME.lock; returns its path.

    The same resolution gives the same bytes: uv runs inside a scratch directory on
    `requirements.in` by that relative name, so no temporary path reaches the `# via` lines.
    Locking again keeps the versions of the existing lock that still fit (uv prefers the pins of
    its output file), so a changed spec moves only what it must.

    A spec whose license policy can refuse something (`licenses.deny`, `licenses.allow` or
    `unknown: refuse`) has the licenses of the resolution checked before anything is written
    (LicenseError naming each package and its license); see `check_licenses`.
    """
    if outside := torch_outside(spec):
        raise LockError(f"{images_dir / spec.name}.yaml: " + "\n".join(outside))
    links = []
    for link in find_links or []:
        if "://" not in link:  # a folder: uv runs elsewhere, so it goes by its absolute path
            if not Path(link).is_dir():
                raise LockError(f"--find-links {link}: no such directory")
            link = str(Path(link).resolve())
        links.append(link)
    text = resolve(spec, lock_path(images_dir, spec), links)
    if spec.torch_from == "base":
        text = drop_with_exclusive_deps(text, "torch")
    if _can_refuse(spec.licenses):
        check_licenses(spec, images_dir, parse_lock(text), wheels_root, links)
    path = lock_path(images_dir, spec)
    header = (f"# lock of image '{spec.name}' (spec {spec_hash(spec)}), for python {spec.python} on "
              f"{spec.platform}; written by `runner lock {spec.name}`\n")  # fmt: skip
    try:
        path.write_text(seal(header + text), encoding="utf-8")
    except OSError as e:
        raise LockError(f"cannot write {path}: {e.strerror}") from None
    return path


def resolve(spec: ImageSpec, previous: Path, links: list[str]) -> str:
    """uv's resolution of the spec's requirements for its python and platform, pinned with hashes
    (the pins of `previous`, where it exists and they still fit, kept)."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if not Path(uv).exists():
        raise LockError("runner lock needs uv on the connected machine: pip install uv")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / REQUIREMENTS_IN).write_text("\n".join(requirements(spec)) + "\n", encoding="utf-8")
        if previous.exists():  # uv keeps the pins of an existing output file that still fit: no churn
            shutil.copy(previous, Path(tmp) / "lock.txt")
        argv = [uv, "pip", "compile", REQUIREMENTS_IN, "-o", "lock.txt", "--generate-hashes",
                "--python-version", spec.python, "--python-platform", spec.platform,
                "--no-header", "--quiet"]  # fmt: skip
        for link in links:
            argv += ["--find-links", link]
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            uv_says = proc.stderr.strip().removeprefix("error: ")
            message = f"resolving the requirements of image {spec.name} failed:\n{uv_says}"
            hint = torch_hint(spec, proc.stderr)
            raise LockError(message + (f"\n{hint}" if hint else ""))
        return (Path(tmp) / "lock.txt").read_text(encoding="utf-8")


def _can_refuse(policy) -> bool:
    return bool(policy.deny or policy.allow or policy.unknown == "refuse")


def check_licenses(
    spec: ImageSpec, images_dir: Path, entries: dict[str, dict], wheels_root: Path | None = None,
    find_links: list[str] | None = None,
) -> list[licenses.Judged]:  # fmt: skip
    """The licenses of every locked package under the spec's policy: refused ones raise
    LicenseError, unknown ones are logged as warnings. The metadata comes from the wheelhouse's
    files where they are the pinned ones, else from the package index."""
    if problems := licenses.policy_problems(spec.licenses):
        raise licenses.LicenseError("\n".join(f"{images_dir / spec.name}.yaml {p}" for p in problems))
    pins = {n: (e["version"], set(e["hashes"])) for n, e in entries.items()}
    found = distmeta.from_folder(wheels_root / spec.name, pins) if wheels_root else {}
    rest = {n: e["text"] for n, e in entries.items() if n not in found}
    if rest:
        tags = distmeta.platform_tags(spec.platform)
        found.update(distmeta.from_index(rest, spec.python, tags, find_links))
    judged = licenses.judge_all(
        spec.licenses, [(e["name"], e["version"], found.get(n)) for n, e in sorted(entries.items())]
    )
    licenses.enforce(spec.licenses, judged, f"{images_dir / spec.name}.yaml", lambda n: via(entries, n))
    return judged


def via(entries: dict[str, dict], name: str) -> str:
    """Who requires `name`, as the lock's `# via` lines say (the spec itself for -r requirements.in)."""
    via = sorted(entries.get(normalize(name), {}).get("via", ()))
    return ", ".join("the image's requirements" if v == "-r" else v for v in via)


_SEAL = "# sha256 of this lock without this line: "
_SEAL_LINE = re.compile(rf"^{re.escape(_SEAL)}([0-9a-f]{{64}})\n", re.M)


def seal(text: str) -> str:
    """The lock with its own digest as its second line: an edit by hand breaks it."""
    first, _, rest = text.partition("\n")
    digest = hashlib.sha256((first + "\n" + rest).encode()).hexdigest()
    return f"{first}\n{_SEAL}{digest}\n{rest}"


def check_seal(path: Path, name: str) -> str | None:
    """What is wrong with a lock's seal (edited by hand, or written before locks were sealed);
    None when the lock is as `runner lock` wrote it."""
    text = path.read_text(encoding="utf-8")
    m = _SEAL_LINE.search(text)
    again = f"run `runner lock {name}` again (and `runner wheels {name}`) instead of editing it"
    if m is None:
        return f"{path} carries no sha256 of its own, so an edit by hand could not be told; {again}"
    rest = text[: m.start()] + text[m.end() :]
    if hashlib.sha256(rest.encode()).hexdigest() != m[1]:
        return f"{path} was edited by hand: it no longer matches the sha256 in its header; {again}"
    return None


def torch_hint(spec: ImageSpec, stderr: str) -> str | None:
    """One line on what to pass when uv finds no torch build with a local version (+cpu, +cu124):
    PyPI carries none of them."""
    version, plus, build = spec.torch.partition("+")
    if not plus or not re.search(rf"\btorch(==|\s*\(v?){re.escape(version)}", stderr):
        return None
    return (
        f"hint: torch=={spec.torch} is a PyTorch build that PyPI does not carry: pass the folder that "
        f"holds its wheel (python {spec.python}, {spec.platform}) with `runner lock {spec.name} "
        f"--find-links DIR`, or PyTorch's page for the build: "
        f"`--find-links https://download.pytorch.org/whl/{build}/torch/`"
    )


def parse_lock(text: str) -> dict[str, dict]:
    """name -> {version, hashes, via} from a uv/pip-compile requirements file with hashes."""
    entries: dict[str, dict] = {}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        m = _BLOCK.match(block.strip())
        if not m:
            continue
        via = re.findall(r"#[ \t]+via[ \t]+(\S+)|#[ \t]{3,}(\S+)", block)
        entries[normalize(m["name"])] = {
            "name": m["name"],
            "version": m["version"],
            "hashes": re.findall(r"--hash=sha256:([0-9a-f]{64})", block),
            "via": {normalize(a or b) for a, b in via if (a or b) != "via"},
            "text": block.strip(),
        }
    return entries


def drop_with_exclusive_deps(text: str, package: str) -> str:
    """Remove `package`, every entry required only by removed entries, and the CUDA runtime
    pieces of its closure (nvidia-*, triton): the base image carries exactly those builds."""
    entries = parse_lock(text)
    closure = {normalize(package)}
    changed = True
    while changed:
        changed = False
        for name, e in entries.items():
            if name not in closure and e["via"] & closure:
                closure.add(name)
                changed = True
    removed = {normalize(package)} | {n for n in closure if n.startswith("nvidia-") or n == "triton"}
    changed = True
    while changed:
        changed = False
        for name, e in entries.items():
            if name in removed or not e["via"]:
                continue
            if all(v in removed for v in e["via"]):
                removed.add(name)
                changed = True
    kept = [e["text"] for n, e in entries.items() if n not in removed]
    dropped = ", ".join(sorted(entries[n]["name"] for n in removed if n in entries))
    return f"# carried by the base image, not locked: {dropped}\n" + "\n".join(kept) + "\n"
