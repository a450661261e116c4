#!/usr/bin/env bash
# Refresh the third-party files the board serves (runner/host/board/static/vendor/) from the npm
# registry, on a connected machine at development time. The board itself never fetches anything.
#
#   scripts/vendor-board-assets.sh            # the versions vendor.json names
#   UPLOT_VERSION=1.6.33 scripts/vendor-board-assets.sh
#
# `npm pack` downloads the package's tarball and checks it against the registry's integrity hash;
# the files are copied with their license, and vendor.json records version, integrity and each
# file's sha256 (tests/unit/test_board_assets.py checks them). Needs node, npm and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=runner/host/board/static/vendor
UPLOT_VERSION="${UPLOT_VERSION:-$(python3 -c 'import json,sys; print(next(p["version"] for p in json.load(open(sys.argv[1]))["packages"] if p["name"]=="uplot"))' "$VENDOR/vendor.json")}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "uplot@$UPLOT_VERSION" >/dev/null && tar xzf "uplot-$UPLOT_VERSION.tgz")
integrity="$(cd "$work" && npm view "uplot@$UPLOT_VERSION" dist.integrity)"
mkdir -p "$VENDOR/uplot"
cp "$work/package/dist/uPlot.iife.min.js" "$work/package/dist/uPlot.min.css" "$work/package/LICENSE" "$VENDOR/uplot/"

python3 - "$VENDOR" "$UPLOT_VERSION" "$integrity" <<'PY'
import hashlib, json, sys
from pathlib import Path
vendor, version, integrity = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
manifest = json.loads((vendor / "vendor.json").read_text())
for package in manifest["packages"]:
    if package["name"] == "uplot":
        package["version"], package["tarball_integrity"] = version, integrity
        for name, entry in package["files"].items():
            entry["sha256"] = hashlib.sha256((vendor / name).read_bytes()).hexdigest()
(vendor / "vendor.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(f"uplot {version} vendored into {vendor}")
PY
