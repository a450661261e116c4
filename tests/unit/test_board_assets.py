"""The board loads nothing from outside: no page, template, script or style names another
origin; the vendored library is the npm release vendor.json names (hashes, license file); the
wheel carries every file the board serves."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import pytest

from tests.board_helpers import Client, make_run, serving

BOARD = Path(__file__).resolve().parents[2] / "runner" / "host" / "board"
STATIC, TEMPLATES = BOARD / "static", BOARD / "templates"
VENDOR = STATIC / "vendor"
# Any absolute or protocol-relative address: http://, https://, ws://, //host, and
# `url(...)`/`@import`/`src=`/`href=` values that are not paths on the board itself.
ADDRESS = re.compile(r"""(?i)\b(?:https?|wss?|ftp):/?/|(?<![:\w\\])//[a-z0-9-]+\.[a-z]""")
REFERENCE = re.compile(
    r"""(?i)(?:src|href|action)\s*=\s*["']?([^"'\s>]+)|url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)"""
)
LICENSE_BANNER = re.compile(r"/\*!.*?\*/", re.S)  # a minified library's license comment


def served_text() -> dict[str, str]:
    files = {}
    for path in sorted([*STATIC.rglob("*"), *TEMPLATES.rglob("*")]):
        if path.is_file() and path.suffix in (".js", ".css", ".html", ".svg", ".json", ".map", ".txt", ""):
            files[str(path.relative_to(BOARD))] = path.read_text(encoding="utf-8")
    return files


def external(text: str) -> list[str]:
    text = LICENSE_BANNER.sub("", text)
    found = [m.group(0) for m in ADDRESS.finditer(text)]
    for m in REFERENCE.finditer(text):
        value = next(g for g in m.groups() if g)
        if not (value.startswith(("/", "#", "data:", "?")) or value.startswith("{{")) and "://" in value:
            found.append(value)
    return found


def test_no_asset_or_template_names_another_origin():
    files = served_text()
    assert any(name.endswith("uPlot.iife.min.js") for name in files) and any(
        n.endswith(".html") for n in files
    )
    offenders = {name: hits for name, text in files.items() if not name.endswith("LICENSE")
                 and (hits := external(text))}  # fmt: skip
    assert not offenders, f"served files that name another origin: {offenders}"


def test_the_check_finds_an_external_reference():
    assert external('<script src="https://cdn.example.com/x.js"></script>')
    assert external("@font-face { src: url(//fonts.gstatic.com/s/roboto.woff2) }")
    assert external("@import 'http://fonts.googleapis.com/css?family=Roboto';")
    assert external("fetch('https://api.example.com/')")
    assert not external(
        '<script src="/static/board.js"></script> a // comment.here\n/*! https://github.com/x */'
    )


def test_every_rendered_page_references_only_the_board(tmp_path: Path):
    from runner.host.board import Access, Board
    from runner.host.board.actions import Jobs
    from runner.host.board.runs import Runs

    run = make_run(tmp_path / "out", "demo")
    access = Access.configure("127.0.0.1", 0, None, no_token=True, read_only=False)
    board = Board(runs=Runs([tmp_path / "out"]), jobs=Jobs(tmp_path), access=access, base=tmp_path,
                  state_dir=tmp_path / "state")  # fmt: skip
    with serving(board) as server:
        client = Client(server.server_address[1])
        for path in ("/", f"/runs/{run.id}", "/compare", "/jobs", "/nothing"):
            _, headers, body = client.get(path)
            assert not external(body.decode()), path
            for m in REFERENCE.finditer(body.decode()):
                value = next(g for g in m.groups() if g)
                assert value.startswith(("/", "#")), (path, value)  # the board's own paths only
                if value.startswith("/static/"):
                    assert client.get(value)[0] == 200, value
            assert "default-src 'self'" in headers["content-security-policy"]


def test_vendored_files_are_the_release_vendor_json_names():
    manifest = json.loads((VENDOR / "vendor.json").read_text(encoding="utf-8"))
    listed = set()
    for package in manifest["packages"]:
        assert package["license"] and (VENDOR / package["license_file"]).is_file(), package["name"]
        assert package["version"] and package["tarball_integrity"].startswith("sha512-")
        for name, entry in package["files"].items():
            digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
            assert digest == entry["sha256"], f"{name} differs from {package['name']} {package['version']}"
            listed.add(name)
    on_disk = {
        str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file() and p.name != "vendor.json"
    }
    assert on_disk == listed, "every vendored file is listed in vendor.json, with its source and hash"


def test_the_wheel_carries_the_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from runner.host.images.build import runner_wheel

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    names = set(zipfile.ZipFile(runner_wheel(tmp_path / "wheel")).namelist())
    wanted = {f"runner/host/board/{p.relative_to(BOARD)}" for p in [*STATIC.rglob("*"), *TEMPLATES.rglob("*")]
              if p.is_file()}  # fmt: skip
    assert wanted <= names, sorted(wanted - names)
