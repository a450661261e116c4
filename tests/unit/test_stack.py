"""The suite tests the stack that ships: every package of the CPU image's lock that this
environment has is at its locked version (`make install` installs with the lock's pins)."""

from __future__ import annotations

import re
from importlib import metadata

from tests.conftest import ROOT


def locked(image: str) -> dict[str, str]:
    text = (ROOT / "images" / f"{image}.lock").read_text(encoding="utf-8")
    return {
        m[1].lower().replace("_", "-"): m[2] for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)
    }


def test_the_environment_runs_the_cpu_images_versions():
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version for d in metadata.distributions()}
    pins = locked("cpu")
    differ = {
        name: (installed[name], pin)
        for name, pin in pins.items()
        if name in installed and installed[name] != pin
    }
    assert not differ, (
        "installed != images/cpu.lock for: "
        + ", ".join(f"{n} {have} (lock {pin})" for n, (have, pin) in sorted(differ.items()))
        + "; reinstall with `make install` (it installs the lock's versions)"
    )
    for core in ("torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed"):
        assert core in installed and core in pins, f"{core} must be installed and locked"
