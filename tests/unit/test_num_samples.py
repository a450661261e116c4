"""num_samples as LLaMA-Factory defines it: N records drawn at random (seeded); more than the
dataset holds takes every record once and draws the rest again. The same data directory trains
on the same number of rows in runner as in LLaMA-Factory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from runner.core.data.readers import draw, load, numpy_random
from runner.core.jobspec.load import load_job, resolve
from tests.conftest import ROOT


def test_fewer_than_the_dataset_is_a_seeded_random_draw():
    items = list(range(45))
    drawn = draw(items, 10, 42)
    assert len(drawn) == len(set(drawn)) == 10 and drawn != items[:10]
    assert draw(items, 10, 42) == drawn and draw(items, 10, 7) != drawn


def test_the_same_records_as_llamafactory_for_the_same_seed():
    """Recorded with LLaMA-Factory 0.9.5 itself (transformers.set_seed(42), then its loader's
    _get_merged_dataset on two entries: a.json of 45 records with num_samples 10, b.json of 12
    with num_samples 20): its draws continue one numpy stream across the datasets."""
    rng = numpy_random(42)
    assert draw(list(range(45)), 10, rng) == [39, 25, 26, 43, 35, 41, 4, 12, 8, 3]
    assert draw(list(range(12)), 20, rng) == [0, 5, 2, 6, 11, 7, 4, 9, 10, 1, 8, 3, 6, 11, 7, 2, 0, 3, 1, 7]


def test_the_draw_is_numpys_legacy_generator():
    np = pytest.importorskip("numpy")
    for seed, n, k in ((42, 45, 10), (7, 45, 65), (2**32 - 1, 1000, 999), (0, 70000, 20)):
        np.random.seed(seed)
        expected = np.random.permutation(n)[:k].tolist()
        expected += np.random.choice(n, k - len(expected)).tolist() if k > len(expected) else []
        assert draw(list(range(n)), k, seed) == expected


def test_more_than_the_dataset_takes_every_record_then_draws_again():
    items = list(range(45))
    drawn = draw(items, 65, 42)
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
