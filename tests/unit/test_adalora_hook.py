"""The Trainer contract AdaLoRA's rank budget relies on (runner/train/adalora.py): transformers'
Trainer calls `on_optimizer_step` once per optimizer step, after the step and before the gradients
are cleared, with `state.global_step` counting the steps before it. PEFT's update_and_allocate
scores each weight by |w * grad| there; if this ever changes, this test names the callback."""

from __future__ import annotations

import pytest


def test_on_optimizer_step_sees_every_step_s_gradients(tmp_path):
    torch = pytest.importorskip("torch", reason="the in-container dependencies (.[train]) are not installed")
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def forward(self, x, labels):
            return {"loss": ((self.w(x).squeeze(-1) - labels) ** 2).mean()}

    seen: list[tuple[int, bool]] = []

    class Hook(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads = [p.grad for p in model.parameters()]
            seen.append((state.global_step, all(g is not None and g.abs().sum() > 0 for g in grads)))

    rows = [{"x": [float(i), 1.0], "labels": float(i % 3)} for i in range(8)]
    args = TrainingArguments(str(tmp_path), max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                             report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no")  # fmt: skip
    Trainer(model=Tiny(), args=args, train_dataset=rows, callbacks=[Hook()]).train()
    assert seen == [(0, True), (1, True), (2, True)], "RankBudget.on_optimizer_step (runner/train/adalora.py)"
