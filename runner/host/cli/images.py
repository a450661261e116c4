"""The image pipeline: lock, wheels, build, bundle (connected side), load (air-gapped side), env and
the tiny test model."""

from __future__ import annotations

import sys
from pathlib import Path

import click

_find_links = click.option(
    "--find-links", "find_links", multiple=True, metavar="DIR|URL",
    help="Extra place to find wheels (e.g. a folder with a CPU torch build). Repeatable.",
)  # fmt: skip


@click.command()
@click.argument("image")
@_find_links
def lock(image: str, find_links: tuple[str, ...]) -> None:
    """Resolve IMAGE's requirements for its platform into images/IMAGE.lock (pinned, hashed)."""
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import lock as do_lock
    from runner.host.images.lock import parse_lock

    path = do_lock(load_image(image), Path("images"), list(find_links))
    click.echo(f"{path}: {len(parse_lock(path.read_text(encoding='utf-8')))} packages pinned with hashes")


@click.command()
@click.argument("image")
@click.option("--verify", is_flag=True, help="Only check the wheelhouse against the lock; no network.")
@_find_links
def wheels(image: str, verify: bool, find_links: tuple[str, ...]) -> None:
    """Fill offline_wheels/IMAGE/ with every wheel the lock needs (or --verify it)."""
    from runner.core.jobspec.load import load_image
    from runner.host.images.wheels import WheelhouseError, fill
    from runner.host.images.wheels import verify as check

    spec = load_image(image)
    if not verify:
        fill(spec, Path("images"), Path("offline_wheels"), list(find_links))
    problems = check(spec, Path("images"), Path("offline_wheels"))
    if problems:
        raise WheelhouseError(f"offline_wheels/{spec.name} is not complete:\n  " + "\n  ".join(problems))
    n = len(list((Path("offline_wheels") / spec.name).glob("*.whl")))
    click.echo(f"offline_wheels/{spec.name}: {n} wheels, complete for images/{spec.name}.lock")


@click.command()
@click.argument("image")
@click.option("--quiet", "-q", is_flag=True, help="Do not stream the build log.")
def build(image: str, quiet: bool) -> None:
    """Build IMAGE from its wheelhouse with the network off for every step."""
    from runner.core.jobspec.load import load_image
    from runner.host.images.build import build as do_build

    built = do_build(
        load_image(image),
        Path("images"),
        Path("offline_wheels"),
        log=(lambda s: None) if quiet else click.echo,
    )
    click.echo(f"built {built.tag} ({built.image_id[:19]}) in {built.seconds:.0f} s")


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(), help="Archive to write (a new file)."
)
@click.option("--model", type=click.Path(), help="A model directory to carry too.")
@click.option("--data", type=click.Path(), help="A data directory to carry too.")
def bundle(refs: tuple[str, ...], out: str, model: str | None, data: str | None) -> None:
    """Pack images (IMAGE names or docker refs) and optionally a model and data into one archive.

    Each image brings every tag it has (`localhost/runner/NAME:latest` and its content-hash tag).
    """
    from runner.core.jobspec.image import image_ref
    from runner.host.images.bundle import bundle as do_bundle

    resolved = [image_ref(r) for r in refs]
    total = do_bundle(
        resolved, Path(out), Path(model) if model else None, Path(data) if data else None, log=click.echo
    )
    click.echo(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB, aggregate sha256 {total}")


@click.command()
@click.argument("archive", type=click.Path())
@click.option("--to", "to", type=click.Path(), help="Where the bundle's model/ and data/ go.")
def load(archive: str, to: str | None) -> None:
    """Verify a bundle's checksums, load its images, check their ids and tags."""
    from runner.host.images.bundle import load as do_load

    manifest = do_load(Path(archive), Path(to) if to else None, log=click.echo)
    for image in manifest["images"]:
        others = [t for t in image.get("tags", []) if t != image["ref"]]
        also = f", also tagged {', '.join(others)}" if others else ""
        click.echo(f"loaded {image['ref']} ({image['id'][:19]}){also}")
    if to:
        for prefix in ("model", "data"):
            if any(name.startswith(prefix + "/") for name in manifest["files"]):
                click.echo(f"{prefix}/ -> {Path(to) / prefix}")
    click.echo(f"verified: aggregate sha256 {manifest['aggregate']}")


@click.command()
def env() -> None:
    """Versions of every dependency, the torch device state and the Docker engine."""
    from runner.host.envinfo import report

    for key, value in report():
        click.echo(f"{key:<14} {value}")


@click.command("tiny-model")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--kind", type=click.Choice(["llama", "bert"]), default="llama", show_default=True,
              help="llama: a causal LM (chat, sft, dpo...); bert: an encoder for stages cls and ner.")  # fmt: skip
def tiny_model(out_dir: str, seed: int, kind: str) -> None:
    """Build a tiny random Llama model (or BERT encoder) and its tokenizer locally (no download)."""
    import os
    import subprocess

    from runner.core.offline import OFFLINE_ENV
    from runner.host.execute.local import require_training_libraries

    require_training_libraries("building the tiny model", "Build it on a machine that has them")
    argv = [sys.executable, "-m", "runner.train.tools.tiny", out_dir, "--seed", str(seed), "--kind", kind]
    sys.exit(subprocess.call(argv, env={**os.environ, **OFFLINE_ENV}))


COMMANDS = (
    lock,
    wheels,
    build,
    bundle,
    load,
    env,
    tiny_model,
)
