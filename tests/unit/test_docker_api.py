from __future__ import annotations

import pytest

from runner.host.docker_api import Docker, DockerUnavailable
from tests.conftest import runner_cli


def test_no_engine_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    with pytest.raises(DockerUnavailable, match="no Docker engine is reachable"):
        Docker(timeout=2)


def test_cli_build_without_engine_exits_cleanly(tmp_path):
    result = runner_cli("build", "cpu", env={"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"})
    assert result.returncode == 4
    assert result.stderr.startswith("error: no Docker engine is reachable")
    assert "Traceback" not in result.stderr
