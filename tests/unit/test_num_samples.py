"""num_samples as LLaMA-Factory defines it: N records drawn at random (seeded); more than the
dataset holds takes every record once and draws the rest again. The same data directory trains
on the same number of rows in runner as in LLaMA-Factory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from runner.core.data.readers import draw, load
from runner.core.jobspec.load import load_job, resolve
from tests.conftest import ROOT


def test_fewer_than_the_dataset_is_a_seeded_random_draw():
    items = list(range(45))
    drawn = draw(items, 10, seed=42)
    assert len(drawn) == len(set(drawn)) == 10 and drawn != items[:10]
    assert draw(items, 10, seed=42) == drawn and draw(items, 10, seed=7) != drawn


def test_more_than_the_dataset_takes_every_record_then_draws_again():
    items = list(range(45))
    drawn = draw(items, 65, seed=42)
    assert len(drawn) == 65 and set(drawn) == set(items)


def test_a_registry_entry_with_num_samples_trains_on_that_many_rows(tmp_path: Path):
    registry = tmp_path / "data"
    shutil.copytree(ROOT / "tests" / "data" / "registry", registry)
    records = len(json.loads((registry / "identity.json").read_text(encoding="utf-8")))
    wanted = records + 25  # more than the file holds: every record once, 25 drawn again
    info = json.loads((registry / "dataset_info.json").read_text(encoding="utf-8"))
    info["identity+"] = {"file_name": "identity.json", "num_samples": wanted}
    (registry / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False), encoding="utf-8")
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(json.dumps({
        "name": "n", "model": {"path": str(ROOT / "tests/data/models/fake")}, "method": {"type": "lora"},
        "data": {"dataset_dir": "data", "datasets": [{"name": "identity+"}]},
    }))  # fmt: skip
    spec = resolve(load_job(spec_file, base=tmp_path), tmp_path)
    ds = spec.data.datasets[0]
    assert (ds.num_samples, ds.max_samples) == (wanted, None)
    (items,) = load(spec.data, seed=42)
    assert len(items) == wanted
