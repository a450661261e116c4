"""Small engine defects, each with a test that failed before its fix."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import runner_cli, write_job


def test_a_failed_run_always_says_why(tmp_path: Path):
    """No known pattern in the log: the job's own last error line, not the launcher's summary."""
    from runner.core.rundir import explain_failure

    (tmp_path / "train.log").write_text(
        "step 1/10\n[rank0]: Traceback (most recent call last):\n"
        "[rank0]: FileNotFoundError: [Errno 2] No such file or directory: '/models/x/config.json'\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n  error_file: <N/A>\n"
    )
    message = explain_failure(tmp_path, 1)
    assert message.startswith(
        "FileNotFoundError: [Errno 2] No such file or directory: '/models/x/config.json'"
    )
    (tmp_path / "train.log").write_text("tokenizing\nerror: data/faq.csv record 3: no output\n")
    assert explain_failure(tmp_path, 2).startswith("error: data/faq.csv record 3: no output")


def test_submit_without_an_engine_names_the_local_executor(tmp_path: Path):
    spec = write_job(tmp_path / "job.yaml", Path("tests/data/models/fake"))
    result = runner_cli("submit", str(spec), env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"})
    assert result.returncode == 4, result.stderr
    assert "--executor local" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_logits_on_targets_only_falls_back_for_a_forward_without_logits_to_keep():
    import pytest

    pytest.importorskip("transformers")
    from runner.train.compat import takes_logits_to_keep

    class RemoteCode:  # like ChatGLM3's forward: no logits_to_keep
        def forward(self, input_ids=None, labels=None, **kwargs):
            return None

    class Transformers:
        def forward(self, input_ids=None, labels=None, logits_to_keep=0):
            return None

    assert not takes_logits_to_keep(RemoteCode())
    assert takes_logits_to_keep(Transformers())
    assert os.environ["HF_HUB_OFFLINE"] == "1"
