"""Choosing checkpointing under training.memory_cap_gib from a measured profile
(runner/train/memory.py); the probe itself is measured on the tiny model in tests/integration."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from runner.core.errors import UnsupportedError  # noqa: E402
from runner.train.memory import GIB, Checkpointing, Profile, candidates, choose  # noqa: E402

# 8 layers keeping 100 KiB per token each, 2 KiB/token of layer input, 60 KiB/token outside.
PROFILE = Profile(layers=[(100 * 1024, 0.0)] * 8, rest=(60 * 1024, 0.0), layer_input=2048, static=10 * GIB)
TOKENS = 16384


def test_candidates_go_from_fastest_to_leanest_without_repeats():
    plans = candidates(8, offload=True)
    assert plans[0] == Checkpointing(False) and plans[-1] == Checkpointing(True, 1, offload=True)
    assert [p.every_n_layers for p in plans[1:-1]] == [8, 7, 3, 2, 1]  # 1, 2, 3, 4, 8 layers checkpointed
    estimates = [PROFILE.estimate(TOKENS, p) for p in plans]
    assert estimates == sorted(estimates, reverse=True)
    assert Checkpointing(True, 1, offload=True) not in candidates(8, offload=False)


def test_the_fastest_plan_that_fits_is_chosen():
    none, every = (PROFILE.estimate(TOKENS, p) for p in (Checkpointing(False), Checkpointing(True, 1)))
    assert choose(PROFILE, TOKENS, cap=none, offload=True)[0] == Checkpointing(False)
    half = PROFILE.estimate(TOKENS, Checkpointing(True, 2))
    assert choose(PROFILE, TOKENS, cap=half, offload=True)[0] == Checkpointing(True, 2)
    assert choose(PROFILE, TOKENS, cap=half - 1, offload=True)[0] == Checkpointing(True, 1)
    assert choose(PROFILE, TOKENS, cap=every - 1, offload=True)[0] == Checkpointing(True, 1, offload=True)
    plan, need = choose(PROFILE, TOKENS, cap=every, offload=False)
    assert plan == Checkpointing(True, 1) and need == every


def test_a_cap_nothing_fits_stops_with_what_it_would_take():
    with pytest.raises(UnsupportedError) as e:
        choose(PROFILE, TOKENS, cap=11 * GIB, offload=True)
    message = str(e.value)
    assert message.startswith("training.memory_cap_gib: 11 GiB cannot hold a pass of 16,384 tokens")
    assert "10.0 GiB" in message and "micro_batch_tokens" in message


def test_optimizer_state_and_gradients_are_split_as_zero_splits_them():
    import torch

    from runner.core.jobspec.job import JobSpec
    from runner.train.memory import static_bytes

    model = torch.nn.Sequential(torch.nn.Linear(100, 100, bias=False), torch.nn.Linear(100, 100, bias=False))
    model[0].weight.requires_grad_(False)  # 40,000 bytes each, one trained

    def spec(**deepspeed):
        data = {"name": "x", "model": {"path": "m"}, "method": {"type": "full"},
                "data": {"datasets": [{"path": "d"}]}}  # fmt: skip
        return JobSpec.model_validate(
            {**data, "distributed": {"deepspeed": deepspeed}} if deepspeed else data
        )

    assert static_bytes(model, spec()) == 80_000 + 3 * 40_000  # gradient and AdamW's two moments
    assert static_bytes(model, spec(zero=0), 4) == 80_000 + 40_000 + 12 * 10_000
    assert static_bytes(model, spec(zero=1), 4) == 80_000 + 40_000 + 12 * 10_000 // 4
    assert static_bytes(model, spec(zero=2), 4) == 80_000 + 40_000 // 4 + 12 * 10_000 // 4
    assert static_bytes(model, spec(zero=2, offload_optimizer=True), 4) == 80_000 + 40_000 // 4
