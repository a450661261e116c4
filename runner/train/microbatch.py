"""Token-budget micro-batches: one optimizer step's samples, split into as few forward passes
of at most `budget` tokens as fit, instead of a fixed number of samples per pass.

A fixed sample count sizes every pass for the longest samples that might meet in it; a token
budget keeps each pass as large as memory allows, whatever the lengths. The split is a
first-fit-decreasing bin packing of whole samples, so the samples of a step (and with them the
loss and the gradient, which are sums over tokens) do not change, only how many passes they take.
"""

from __future__ import annotations

import torch


def split(batch: dict, budget: int) -> list[dict]:
    """The batch as micro-batches of at most `budget` tokens each (a sample longer than the
    budget goes alone). A packed batch (one row, no attention_mask, positions restarting at
    every sample) splits at sample boundaries; a padded batch splits by rows, each part
    trimmed to its own longest row, padded positions counting against the budget."""
    if "attention_mask" not in batch and batch["input_ids"].shape[0] == 1 and "position_ids" in batch:
        return _split_packed(batch, budget)
    return _split_padded(batch, budget)


def pack(lengths: list[int], budget: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped so that each group sums to at most
    `budget` (one item over the budget forms its own group)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(budget - lengths[i])
    return bins


def _split_packed(batch: dict, budget: int) -> list[dict]:
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    bounds = list(zip(starts, starts[1:] + [positions.numel()], strict=True))
    parts = []
    for group in pack([end - start for start, end in bounds], budget):
        index = torch.cat([torch.arange(*bounds[i], device=positions.device) for i in sorted(group)])
        parts.append({k: _take(v, index, dim=1) for k, v in batch.items()})
    return parts


def _split_padded(batch: dict, budget: int) -> list[dict]:
    mask = batch["attention_mask"].bool()
    lengths = mask.sum(dim=1).tolist()
    parts = []
    for group in _pack_rows(lengths, budget):
        rows = torch.tensor(group, device=mask.device)  # a GPU batch arrives on its device
        columns = mask[rows].any(dim=0).nonzero().flatten()  # left or right padding alike
        parts.append({k: _take(_take(v, rows, dim=0), columns, dim=1) for k, v in batch.items()})
    return parts


def _pack_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows by decreasing length, cut where rows x longest row would pass the budget: rows of
    similar length share a part, which keeps the padding small."""
    parts: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if parts and (len(parts[-1]) + 1) * lengths[parts[-1][0]] <= budget:
            parts[-1].append(i)
        else:
            parts.append([i])
    return parts


def _take(value, index: torch.Tensor, dim: int):
    if isinstance(value, torch.Tensor) and value.dim() > dim:
        return value.index_select(dim, index)
    return value
