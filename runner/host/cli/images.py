"""The image pipeline: lock, wheels, build, bundle (connected side), load (air-gapped side); what a
security review receives: sbom, licenses, keygen; env and the tiny test model."""

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

    path = do_lock(load_image(image), Path("images"), list(find_links), wheels_root=Path("offline_wheels"))
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
@click.option(
    "--record-host", is_flag=True, help="Label the image with this machine's host name (provenance)."
)
def build(image: str, quiet: bool, record_host: bool) -> None:
    """Build IMAGE from its wheelhouse with the network off for every step."""
    from runner.core.jobspec.load import load_image
    from runner.host.images.build import build as do_build

    built = do_build(
        load_image(image),
        Path("images"),
        Path("offline_wheels"),
        log=(lambda s: None) if quiet else click.echo,
        record_host=record_host,
    )
    click.echo(f"built {built.tag} ({built.image_id[:19]}) in {built.seconds:.0f} s")


@click.command()
@click.argument("refs", nargs=-1, required=True)
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(), help="Archive to write (a new file)."
)
@click.option("--model", type=click.Path(), help="A model directory to carry too.")
@click.option("--data", type=click.Path(), help="A data directory to carry too.")
@click.option(
    "--sign", "sign", type=click.Path(), metavar="KEY",
    help="Sign the bundle with this Ed25519 private key (runner keygen, or ssh-keygen -t ed25519).",
)  # fmt: skip
@click.option("--record-host", is_flag=True, help="Write this machine's host name into the provenance.")
def bundle(
    refs: tuple[str, ...], out: str, model: str | None, data: str | None, sign: str | None, record_host: bool
) -> None:
    """Pack images (IMAGE names or docker refs) and optionally a model and data into one archive.

    Each image brings every tag it has (`localhost/runner/NAME:latest` and its content-hash tag),
    its SBOM (CycloneDX) and its license report; the manifest records what built each image.
    """
    from runner.core.jobspec.image import image_ref
    from runner.host.images.bundle import bundle as do_bundle

    resolved = [image_ref(r) for r in refs]
    total = do_bundle(
        resolved, Path(out), Path(model) if model else None, Path(data) if data else None, log=click.echo,
        sign=Path(sign) if sign else None, record_host=record_host,
    )  # fmt: skip
    click.echo(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB, aggregate sha256 {total}")
    if sign:
        click.echo("signed: checksums.txt.sig (check it by hand: see `runner keygen --help`)")


_require_signature = click.option(
    "--require-signature", "pubkey", type=click.Path(), metavar="PUBKEY", envvar="RUNNER_REQUIRE_SIGNATURE",
    help="Refuse the bundle unless one of the Ed25519 keys in this file (KEY.pub of runner keygen) signed "
    "it, and it is unchanged since; also read from $RUNNER_REQUIRE_SIGNATURE.",
)  # fmt: skip


@click.command()
@click.argument("archive", type=click.Path())
@click.option("--to", "to", type=click.Path(), help="Where the bundle's model/ and data/ go.")
@_require_signature
@click.option(
    "--inspect",
    "inspect_only",
    is_flag=True,
    help="Show what the bundle holds and who made it; load nothing.",
)
def load(archive: str, to: str | None, pubkey: str | None, inspect_only: bool) -> None:
    """Verify a bundle's signature and checksums, load its images, check their ids and tags."""
    from runner.host.images.bundle import describe
    from runner.host.images.bundle import load as do_load
    from runner.host.images.signing import load_public

    trusted = load_public(Path(pubkey)) if pubkey else None
    if inspect_only:
        _show(Path(archive), describe(Path(archive), trusted), pubkey)
        return
    manifest = do_load(Path(archive), Path(to) if to else None, log=click.echo, trusted=trusted)
    for image in manifest["images"]:
        others = [t for t in image.get("tags", []) if t != image["ref"]]
        also = f", also tagged {', '.join(others)}" if others else ""
        click.echo(f"loaded {image['ref']} ({image['id'][:19]}){also}")
    if to:
        for prefix in ("model", "data"):
            if any(name.startswith(prefix + "/") for name in manifest["files"]):
                click.echo(f"{prefix}/ -> {Path(to) / prefix}")
    click.echo(_signature_line(manifest.get("signature"), pubkey))
    click.echo(f"verified: aggregate sha256 {manifest['aggregate']}")


def _signature_line(signature: dict | None, pubkey: str | None) -> str:
    if signature is None:
        return "signature: none (the bundle is not signed)"
    if signature["trusted"]:
        return f"signature: good, by {signature['signer']} (a key in {pubkey})"
    return (f"signature: consistent, by {signature['signer']}, but not checked against a key you trust; "
            "pass --require-signature PUBKEY for that")  # fmt: skip


def _show(archive: Path, info: dict, pubkey: str | None) -> None:
    """`runner load --inspect`: provenance, images, SBOMs, files and the signature of a bundle."""
    mib = lambda n: f"{n / 2**20:.1f} MiB"  # noqa: E731
    provenance = info.get("provenance", {})
    bundled = provenance.get("bundled", {})
    click.echo(f"{archive}: {mib(archive.stat().st_size)}, aggregate sha256 {info['aggregate']}")
    click.echo(_signature_line(info.get("signature"), pubkey))
    where = f" on {bundled['host']}" if bundled.get("host") else ""
    click.echo(f"bundled {info.get('created', '?')} by runner {info.get('runner_version', '?')}"
               f"{' (python ' + bundled['python'] + ')' if bundled.get('python') else ''}{where}")  # fmt: skip
    described = {d["id"]: d for d in provenance.get("images", [])}
    for image in info["images"]:
        click.echo(f"image {image['ref']} ({image['id']})")
        if others := [t for t in image.get("tags", []) if t != image["ref"]]:
            click.echo(f"  also tagged {', '.join(others)}")
        d = described.get(image["id"], {})
        if d.get("built"):
            by = f" by runner {d['built_by_runner']}" if d.get("built_by_runner") else ""
            on = f" on {d['built_on']}" if d.get("built_on") else ""
            click.echo(f"  built {d['built']}{by}{on}")
        for key, label in (("lock_sha256", "lock sha256"), ("image_spec_sha256", "image spec sha256"),
                           ("wheel_sha256", "runner wheel sha256")):  # fmt: skip
            if d.get(key):
                click.echo(f"  {label} {d[key]}")
        if d.get("base"):
            click.echo(f"  base {d['base']} ({d.get('base_id') or 'its id unknown where it was bundled'})")
        if d.get("sbom"):
            n = d.get("packages", {})
            click.echo(
                f"  sbom {d['sbom']}: {n.get('python', 0)} Python packages, {n.get('os', 0)} OS packages"
            )
        if d.get("licenses"):
            v = d.get("license_verdicts", {})
            click.echo(f"  licenses {d['licenses']}: " + ", ".join(f"{n} {k}" for k, n in v.items()))
    groups: dict[str, list[int]] = {}
    for name, size in info["files"].items():
        group = name if "/" not in name else name.split("/")[0] + "/"
        groups.setdefault(group, []).append(size)
    for group, sizes in groups.items():
        files = f"{len(sizes)} files, " if group.endswith("/") else ""
        click.echo(f"  {group:<14} {files}{mib(sum(sizes))}")
    click.echo("nothing was loaded; `runner load` checks every member's sha256 before loading")


@click.command()
@click.argument("image")
@click.option(
    "-o", "--output", type=click.Path(), help="Write it to this file (a new one) instead of stdout."
)
def sbom(image: str, output: str | None) -> None:
    """The CycloneDX SBOM of IMAGE (a name from images/, or a docker ref), as JSON.

    It lists the image (id, tags, provenance), its base (name, id), its OS packages (dpkg) and
    every Python package it holds, with version, sha256 of the installed wheel and license; read
    from the engine with no network (the image's own Python reads its packages' metadata).
    """
    from runner.core.jobspec.image import image_ref
    from runner.host.images.sbom import image_sbom

    text, facts = image_sbom(image_ref(image))
    if output is None:
        click.echo(text, nl=False)
        return
    _write_new(Path(output), text)
    click.echo(
        f"{output}: CycloneDX 1.6, {len(facts.python)} Python packages, {len(facts.dpkg)} OS packages",
        err=True,
    )


def _write_new(path: Path, text: str) -> None:
    from runner.core.errors import RunnerError

    try:
        with open(path, "x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise RunnerError(f"{path} exists already; choose another -o (nothing is overwritten)") from None
    except OSError as e:
        raise RunnerError(f"cannot write {path}: {e.strerror}") from None


@click.command("licenses")
@click.argument("image")
@click.option("--built", is_flag=True, help="Read the built image in the engine instead of the wheelhouse.")
def licenses_(image: str, built: bool) -> None:
    """The license of every package of IMAGE under its spec's policy (`licenses:` in images/IMAGE.yaml).

    From the wheels of offline_wheels/IMAGE/ (what `runner build` checks), or with --built from
    the image itself. Exits 6 where the policy refuses a license; an unknown one is a warning.
    """
    from runner.core.jobspec.image import image_ref
    from runner.host.images import licenses

    if built:
        from runner.host.docker_api import Docker
        from runner.host.images.sbom import read_image

        ref = image_ref(image)
        facts = read_image(ref, Docker())
        policy, judged, title = facts.policy, facts.judged(), f"license report of {ref} ({facts.image_id})"
        where = ref
    else:
        from runner.core.jobspec.load import load_image
        from runner.host.images.wheels import WheelhouseError, judge_licenses, verify

        spec = load_image(image)
        if problems := verify(spec, Path("images"), Path("offline_wheels")):
            raise WheelhouseError(f"offline_wheels/{spec.name} is not complete:\n  " + "\n  ".join(problems))
        policy, judged = spec.licenses, judge_licenses(spec, Path("offline_wheels"))
        title, where = (
            f"license report of offline_wheels/{spec.name} (images/{spec.name}.lock)",
            f"images/{spec.name}.yaml",
        )
    click.echo(licenses.report(judged, title, policy), nl=False)
    licenses.enforce(policy, judged, where)


@click.command()
@click.argument("key", type=click.Path())
@click.option("--comment", default="runner-bundle", show_default=True, help="The public key's comment.")
def keygen(key: str, comment: str) -> None:
    """Make an offline Ed25519 key pair for signing bundles: KEY (private, mode 0600) and KEY.pub.

    Keep KEY on the machine that makes bundles (offline if you can); give KEY.pub to the sites
    that load them (`runner load --require-signature KEY.pub`). A bundle's signature is
    checksums.txt.sig, OpenSSH's SSHSIG over checksums.txt, so a reviewer can check it without
    runner:

    \b
      echo "runner $(cat KEY.pub)" > allowed_signers
      tar -xf BUNDLE checksums.txt checksums.txt.sig
      ssh-keygen -Y verify -f allowed_signers -I runner -n runner-bundle \\
          -s checksums.txt.sig < checksums.txt
      tar -xf BUNDLE && grep -v '^aggregate' checksums.txt | sha256sum -c
    """
    from runner.host.images.signing import keygen as do_keygen

    public = do_keygen(Path(key), comment)
    click.echo(f"{key}: private key (mode 0600); keep it offline, never in a bundle")
    click.echo(f"{key}.pub: public key {public.fingerprint}; give it to whoever loads your bundles")
    click.echo(f"allowed_signers line for ssh-keygen -Y verify: runner {public.openssh}")


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
    from runner.host.execute.local import run_here

    sys.exit(run_here(["runner.train.tools.tiny", out_dir, "--seed", str(seed), "--kind", kind],
                      "building the tiny model", "Build it on a machine that has them"))  # fmt: skip


COMMANDS = (
    lock,
    wheels,
    build,
    bundle,
    load,
    sbom,
    licenses_,
    keygen,
    env,
    tiny_model,
)
