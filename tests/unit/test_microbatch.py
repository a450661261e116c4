"""Token-budget splitting of one optimizer step's batch (runner/train/microbatch.py)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from runner.train import microbatch  # noqa: E402

# The Trainer hands over batches already on the training device.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_first_fit_decreasing_fills_each_bin_up_to_the_budget():
    bins = microbatch.pack([90, 20, 60, 40, 30, 10], budget=100)
    assert sorted(sorted(b) for b in bins) == [[0, 5], [1, 4], [2, 3]]  # 90+10, 20+30, 60+40
    assert microbatch.pack([150, 10], budget=100) == [[0], [1]]  # an oversized sample goes alone


def _packed(lengths: list[int], device: str) -> dict:
    ids = torch.arange(sum(lengths))[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[positions == 0] = -100
    return {"input_ids": ids.to(device), "labels": labels.to(device), "position_ids": positions.to(device)}


@pytest.mark.parametrize("device", DEVICES)
def test_a_packed_row_splits_at_sample_boundaries_and_keeps_every_token(device):
    batch = _packed([5, 3, 7, 2], device)
    parts = microbatch.split(batch, budget=8)
    assert all(p["input_ids"].shape[1] <= 8 for p in parts) and len(parts) == 3
    for p in parts:  # every sample whole, its positions still starting at 0
        starts = (p["position_ids"][0] == 0).nonzero().flatten().tolist()
        ends = starts[1:] + [p["position_ids"].shape[1]]
        for s, e in zip(starts, ends, strict=True):
            assert p["position_ids"][0, s:e].tolist() == list(range(e - s))
            assert (p["labels"][0, s:e] == p["input_ids"][0, s:e]).tolist()[1:] == [True] * (e - s - 1)
    kept = sorted(torch.cat([p["input_ids"][0] for p in parts]).tolist())
    assert kept == batch["input_ids"][0].tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_rows_split_by_length_and_lose_their_extra_padding(side, device):
    lengths = [9, 2, 3, 8]
    rows = []
    for i, n in enumerate(lengths):
        tokens, pad = [i + 1] * n, [0] * (9 - n)
        rows.append(tokens + pad if side == "right" else pad + tokens)
    ids = torch.tensor(rows, device=device)
    batch = {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": ids.masked_fill(ids == 0, -100)}
    parts = microbatch.split(batch, budget=18)
    assert [p["input_ids"].shape for p in parts] == [(2, 9), (2, 3)]  # long with long, short with short
    for p in parts:
        for row, mask in zip(p["input_ids"], p["attention_mask"], strict=True):
            assert row[mask.bool()].unique().numel() == 1  # each row's tokens intact
    assert sorted(int(r[r != 0][0]) for p in parts for r in p["input_ids"]) == [1, 2, 3, 4]
