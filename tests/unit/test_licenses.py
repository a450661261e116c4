"""Licenses: what a package's metadata states, how the image's policy judges it, and `runner lock` /
`runner build` refusing a denied license (goldens: the refusal and the warnings, word for word).

The lock goldens run the real `lock()` with uv's resolution stood in for and the packages' metadata
read from a wheelhouse of tiny wheels, so they need no network."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from pathlib import Path

import pytest

from runner.core.jobspec.image import LicensePolicy
from runner.host.images import distmeta, licenses
from runner.host.images.licenses import ALLOWED, DENIED, UNKNOWN, declared, judge
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden" / "licenses"


def meta(**fields: str | list[str]) -> distmeta.Metadata:
    """Core metadata with these fields (a list: the field repeated, as Classifier is)."""
    lines = ["Metadata-Version: 2.4", "Name: pkg", "Version: 1.0"]
    for key, value in fields.items():
        header = key.replace("_", "-")
        lines += [f"{header}: {v}" for v in (value if isinstance(value, list) else [value])]
    return distmeta.parse("\n".join(lines) + "\n\n")


MIT_CLASSIFIER = "License :: OSI Approved :: MIT License"
BSD_CLASSIFIER = "License :: OSI Approved :: BSD License"


@pytest.mark.parametrize(
    "fields, text, source, expression",
    [
        ({"License_Expression": "mit or apache-2.0"}, "MIT OR Apache-2.0", "License-Expression", "MIT OR Apache-2.0"),
        ({"License_Expression": "GPL-3.0"}, "GPL-3.0-only", "License-Expression", "GPL-3.0-only"),  # deprecated id
        ({"License": "BSD-3-Clause"}, "BSD-3-Clause", "License", "BSD-3-Clause"),
        ({"License": "Apache 2.0", "Classifier": [MIT_CLASSIFIER]}, "Apache-2.0", "License", "Apache-2.0"),
        ({"License": "MIT License"}, "MIT", "License", "MIT"),
        ({"License": "BSD 3-Clause License\n        Copyright (c) ...\n"}, "BSD-3-Clause", "License (first line)",
         "BSD-3-Clause"),
        ({"License": "Copyright (c) someone, all rights\n reserved", "Classifier": [MIT_CLASSIFIER]}, "MIT",
         "classifier", "MIT"),
        ({"Classifier": [MIT_CLASSIFIER, "License :: OSI Approved :: ISC License (ISCL)"]}, "MIT AND ISC",
         "classifier", "MIT AND ISC"),
        ({"License": "UNKNOWN"}, "(none stated)", "none", None),
        ({}, "(none stated)", "none", None),
        ({"License": "LICENCE.txt"}, "LICENCE.txt", "License", None),
        ({"Classifier": ["License :: Other/Proprietary License"]}, "Other/Proprietary License", "classifier", None),
    ],
)  # fmt: skip
def test_what_the_metadata_states(fields, text, source, expression):
    got = declared(meta(**fields))
    assert (got.text, got.source, got.expression) == (text, source, expression)


def test_a_family_is_its_candidates_and_a_review_comes_first():
    bsd = declared(meta(Classifier=[BSD_CLASSIFIER]))
    assert bsd.expression is None and bsd.families == (licenses.CLASSIFIERS["OSI Approved :: BSD License"],)
    assert declared(meta(License="Apache")).families == (("Apache-1.0", "Apache-1.1", "Apache-2.0"),)
    reviewed = declared(meta(Classifier=[BSD_CLASSIFIER]), reviewed="bsd-3-clause")
    assert (reviewed.text, reviewed.source, reviewed.expression) == (
        "BSD-3-Clause",
        "reviewed",
        "BSD-3-Clause",
    )


def verdict(policy: LicensePolicy, **fields) -> str:
    return judge(policy, "pkg", "1.0", declared(meta(**fields))).verdict


def test_the_policy_judges_choices_conjunctions_families_and_exceptions():
    deny_gpl = LicensePolicy(deny=["GPL-*", "AGPL-*"])
    assert verdict(deny_gpl, License_Expression="MIT OR GPL-3.0-only") == ALLOWED  # a choice: take MIT
    assert verdict(deny_gpl, License_Expression="MIT AND GPL-3.0-only") == DENIED
    assert verdict(deny_gpl, License_Expression="AGPL-3.0-or-later") == DENIED
    assert verdict(deny_gpl, License_Expression="LGPL-3.0-only") == ALLOWED  # GPL-* is not LGPL-*
    assert (
        verdict(deny_gpl, Classifier=["License :: OSI Approved :: GNU General Public License (GPL)"])
        == DENIED
    )
    assert verdict(deny_gpl, Classifier=[BSD_CLASSIFIER]) == ALLOWED  # every candidate is fine
    assert verdict(deny_gpl, License="LICENCE.txt") == UNKNOWN
    assert verdict(deny_gpl, License_Expression="LicenseRef-Proprietary") == UNKNOWN
    # an exception named whole on the allow list lifts the deny of the license alone
    classpath = "GPL-2.0-only WITH Classpath-exception-2.0"
    assert verdict(deny_gpl, License_Expression=classpath) == DENIED
    assert (
        verdict(LicensePolicy(deny=["GPL-*"], allow=[classpath, "MIT"]), License_Expression=classpath)
        == ALLOWED
    )

    only = LicensePolicy(allow=["MIT", "BSD-*", "Apache-2.0"])
    assert verdict(only, License="MIT") == ALLOWED
    assert verdict(only, License="MPL-2.0") == UNKNOWN  # not on the allow list
    assert verdict(only, Classifier=[BSD_CLASSIFIER]) == UNKNOWN  # 0BSD is not BSD-*: which one is it?
    assert verdict(only, License="Apache") == UNKNOWN  # Apache-1.1 or Apache-2.0?
    assert verdict(only, License_Expression="MPL-2.0 OR MIT") == ALLOWED


def test_a_policy_entry_that_can_never_match_is_named_with_the_closest_identifier():
    policy = LicensePolicy(deny=["GPL-3.0", "AGPL-*", "GPL3"], allow=["Apach-2.0"], reviewed={"x": "Mit-ish"})
    assert licenses.policy_problems(policy) == [
        "licenses.allow: 'Apach-2.0' is no SPDX license identifier and matches none; did you mean Apache-2.0?",
        "licenses.deny: 'GPL3' is no SPDX license identifier and matches none; did you mean GPL-3.0-only or GPL-3.0-or-later?",
        "licenses.reviewed.x: 'Mit-ish' is not an SPDX license expression (e.g. MIT, Apache-2.0, BSD-3-Clause OR MIT)",
    ]


def test_the_policy_in_an_image_spec_is_checked_with_its_line(tmp_path: Path):
    from runner.core.errors import SpecError
    from runner.core.jobspec.load import load_image

    spec = tmp_path / "cpu.yaml"
    spec.write_text(
        (ROOT / "images" / "cpu.yaml").read_text() + "licenses:\n  deny: [GPL *]\n  unknown: ask\n"
    )
    with pytest.raises(SpecError) as e:
        load_image(spec)
    text = str(e.value)
    assert f"{spec}:" in text and "licenses.deny" in text and "licenses.unknown" in text


# ---------------------------------------------------------------------------------------------
# runner lock and runner build: goldens


def wheel(folder: Path, name: str, version: str, **fields) -> Path:
    """A tiny wheel whose METADATA carries `fields`."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    text = "\n".join(
        [f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}"]
        + [
            f"{k.replace('_', '-')}: {v}"
            for k, vs in fields.items()
            for v in (vs if isinstance(vs, list) else [vs])
        ]
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-{version}.dist-info/METADATA", text + "\n\n")
        z.writestr(
            f"{name}-{version}.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{name}-{version}.dist-info/RECORD", "")
        z.writestr(f"{name}/__init__.py", "")
    return path


PACKAGES = {  # name, version, metadata, via
    "alpha": ("1.0", {"License_Expression": "AGPL-3.0-only"}, "-r requirements.in"),
    "beta": ("2.1", {"License": "MIT OR GPL-3.0-only"}, "-r requirements.in"),
    "delta": ("1.2", {"Classifier": ["License :: OSI Approved :: GNU General Public License v3 (GPLv3)"]}, "beta"),
    "epsilon": ("4.0", {"License": "Proprietary, see LICENSE.txt"}, "beta"),
    "gamma": ("0.3", {}, "-r requirements.in"),
    "zeta": ("5.5", {"Classifier": [BSD_CLASSIFIER]}, "alpha"),
}  # fmt: skip


@pytest.fixture
def project(tmp_path: Path, monkeypatch):
    """images/cpu.yaml and a wheelhouse of the PACKAGES; uv's resolution stood in for by their lock."""
    from runner.host.images import lock as lock_mod

    (tmp_path / "images").mkdir()
    house = tmp_path / "offline_wheels" / "cpu"
    house.mkdir(parents=True)
    blocks, files = [], {}
    for name, (version, fields, via) in PACKAGES.items():
        path = wheel(house, name, version, **fields)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        files[path.name] = {"sha256": digest, "size": path.stat().st_size}
        blocks.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n    # via {via}\n")
    (house / "manifest.json").write_text(json.dumps({"image": "cpu", "files": files}))
    monkeypatch.setattr(lock_mod, "resolve", lambda spec, previous, links: "".join(blocks))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # nothing may come from an index: the wheelhouse has it all
    monkeypatch.chdir(tmp_path)
    return tmp_path


def with_policy(project: Path, policy: str) -> Path:
    spec = project / "images" / "cpu.yaml"
    spec.write_text((ROOT / "images" / "cpu.yaml").read_text() + policy)
    return spec


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8")


def test_lock_refuses_a_denied_license_naming_the_package_and_its_license(project: Path):
    from click.testing import CliRunner

    from runner.host.cli import main

    with_policy(project, "licenses:\n  deny: [AGPL-*, GPL-3.0-*]\n")
    result = CliRunner().invoke(main, ["lock", "cpu"])
    assert result.exit_code == 6, result.output
    golden("lock-denied.txt", result.output)
    assert not (project / "images" / "cpu.lock").exists()  # refused before anything was written


def test_lock_warns_about_an_unknown_license_and_writes_the_lock(project: Path, caplog):
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import lock

    with_policy(project, "licenses:\n  deny: [SSPL-1.0]\n")
    with caplog.at_level(logging.WARNING):
        path = lock(load_image("cpu"), Path("images"), wheels_root=Path("offline_wheels"))
    golden("lock-unknown-warned.txt", "".join(f"warning: {r.getMessage()}\n" for r in caplog.records))
    assert path.exists()


def test_lock_refuses_an_unknown_license_where_the_policy_says_so(project: Path):
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import lock

    with_policy(project, "licenses:\n  unknown: refuse\n  reviewed: {gamma: MIT}\n")
    with pytest.raises(licenses.LicenseError) as refused:
        lock(load_image("cpu"), Path("images"), wheels_root=Path("offline_wheels"))
    golden("lock-unknown-refused.txt", str(refused.value) + "\n")


def test_a_spec_without_a_policy_locks_without_reading_licenses(project: Path, monkeypatch):
    from runner.core.jobspec.load import load_image
    from runner.host.images.lock import lock

    with_policy(project, "")
    monkeypatch.setattr(distmeta, "from_folder", lambda *a: pytest.fail("read licenses without a policy"))
    assert lock(load_image("cpu"), Path("images"), wheels_root=Path("offline_wheels")).exists()


def test_build_refuses_a_denied_license_before_its_context_exists(project: Path, caplog):
    """The policy changed after the lock: the build reads the wheels' own metadata, offline."""
    from runner.core.jobspec.load import load_image
    from runner.host.images.build import make_context
    from runner.host.images.lock import lock
    from runner.host.images.wheels import write_manifest

    with_policy(project, "")
    lock_file = lock(load_image("cpu"), Path("images"))
    write_manifest(load_image("cpu"), lock_file, project / "offline_wheels" / "cpu")
    with_policy(project, "licenses:\n  deny: [AGPL-*]\n")
    ctx = project / "ctx"
    ctx.mkdir()
    with pytest.raises(licenses.LicenseError) as refused:
        make_context(load_image("cpu"), Path("images"), Path("offline_wheels"), ctx)
    assert str(refused.value).startswith(
        "images/cpu.yaml licenses.deny: the policy refuses alpha 1.0: AGPL-3.0-only (License-Expression), "
        "denied by AGPL-*; required by the image's requirements"
    )
    assert list(ctx.iterdir()) == []


def test_the_license_report_of_a_wheelhouse(project: Path):
    from click.testing import CliRunner

    from runner.core.jobspec.load import load_image
    from runner.host.cli import main
    from runner.host.images.lock import lock
    from runner.host.images.wheels import write_manifest

    with_policy(project, "licenses:\n  deny: [SSPL-1.0]\n  reviewed: {zeta: BSD-2-Clause}\n")
    lock_file = lock(load_image("cpu"), Path("images"), wheels_root=Path("offline_wheels"))
    write_manifest(load_image("cpu"), lock_file, project / "offline_wheels" / "cpu")
    result = CliRunner().invoke(main, ["licenses", "cpu"])
    assert result.exit_code == 0, result.output
    golden("report-cpu.txt", result.stdout)


def test_metadata_from_an_index_is_read_by_pip_without_the_wheels(tmp_path: Path, monkeypatch):
    """The path of a first lock, before any wheelhouse: pip's dry-run report (here against a folder
    standing in for the index, so no network)."""
    index = tmp_path / "index"
    index.mkdir()
    pinned = {}
    for name, (version, fields, _via) in PACKAGES.items():
        digest = hashlib.sha256(wheel(index, name, version, **fields).read_bytes()).hexdigest()
        pinned[name] = f"{name}=={version} --hash=sha256:{digest}"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    found = distmeta.from_index(pinned, "3.11", distmeta.platform_tags("x86_64-manylinux_2_28"), [str(index)])
    assert sorted(found) == sorted(PACKAGES)
    assert found["alpha"]["License-Expression"] == "AGPL-3.0-only"
    assert found["delta"].get_all("Classifier") == PACKAGES["delta"][1]["Classifier"]
