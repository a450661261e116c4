"""runner's own wheel builds on a machine without network, to the same bytes every time."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest


def test_runner_wheel_builds_without_an_index_and_reproducibly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from runner.host.images.build import runner_wheel

    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on the air-gapped side: no index,
    (tmp_path / "links").mkdir()
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))  # and no wheels to fetch a backend from
    digests = [hashlib.sha256(runner_wheel(tmp_path / f"out{i}").read_bytes()).hexdigest() for i in range(2)]
    assert digests[0] == digests[1]
