"""Every place runner reaches under a library's public API, in one module.

Each piece below overrides something transformers, TRL or PEFT do not promise to keep (a
private method, a private parameter, an attribute a constructor sets) and says what and why.
OVERRIDES names every such override, with the two that live beside what they serve
(runner/train/fused.py, runner/train/methods.py), and the library internals each one relies on;
tests/unit/test_compat.py holds one contract test per entry, which fails naming the entry when
the library's behaviour under it changes. pyproject.toml holds these libraries below their next
minor version: a new one is admitted once those tests pass on it.

The pieces are mixins: a stage's trainer class lists the ones it gets before its library class
(runner/train/trainer.py: sft and pt's RunnerTrainer, the preference stages' TRL trainers).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from pathlib import Path

from runner.core.data.templates import IGNORE
from runner.train import checkpoint, microbatch

log = logging.getLogger(__name__)

# runner's piece -> the library internals it overrides or relies on.
OVERRIDES: dict[str, tuple[str, ...]] = {
    "CommittedCheckpoints": (
        "transformers.Trainer._save_checkpoint", "transformers.Trainer._get_output_dir",
        "transformers.TrainingArguments.save_total_limit (read by _save_checkpoint's rotation)",
    ),
    "StopAtMaxSteps": ("transformers.Trainer._run_epoch",),
    "TokenBudgetSteps": (
        "transformers.Trainer.training_step (num_items_in_batch)",
        "transformers.Trainer.model_accepts_loss_kwargs",
    ),
    "LogitsOnTargets": (
        "transformers.Trainer.compute_loss", "the causal LMs' forward(logits_to_keep=tensor)",
        "transformers.loss.loss_utils.ForCausalLMLoss(shift_labels)",
    ),
    "AdapterOnlySave": (
        "transformers.Trainer.save_model(_internal_call)", "PEFT's save of a second adapter into a subfolder",
    ),
    "TokenizedPairs": ("trl.DPOTrainer._prepare_dataset",),
    "TokenizedUnpaired": ("trl.KTOTrainer._prepare_dataset", "trl.KTOTrainer.calculate_KL"),
    "TokenizedPairRows": (
        "trl.experimental.orpo.ORPOTrainer.tokenize_row", "trl.experimental.cpo.CPOTrainer.tokenize_row",
    ),
    "PPOWithoutTrainerInit": (
        "transformers.Trainer.is_distributed_loading_by_transformers (set by Trainer.__init__)",
        "trl.experimental.ppo.PPOTrainer's self.model.policy",
    ),
    "fused.fuse_lora": (
        "peft.tuners.lora.layer.Linear.forward", "peft.tuners.lora.layer.Linear._cast_input_dtype",
        "the LoRA layer's lora_A, lora_B, scaling, lora_dropout, lora_variant, merged, disable_adapters",
        "deepspeed ZeRO-3's ds_id on the parameters it partitions",
    ),
    "methods._lora_forward": ("peft.tuners.lora.layer.LoraLayer.cast_input_dtype_enabled",),
}  # fmt: skip


# --- transformers' Trainer: what every stage's trainer gets ----------------------------------


class CommittedCheckpoints:
    """Overrides `Trainer._save_checkpoint` and `Trainer._get_output_dir` (transformers).

    The Trainer's own save (model, optimizer, scheduler, RNG states, trainer state: TRL's
    additions too) runs unchanged, but into checkpoints/.partial, which `_get_output_dir` names
    while it runs; checkpoint.committed then makes it durable, marks it COMPLETE and moves it into
    place, and rotates old checkpoints out only after that (the library's rotation, which would
    run inside the save, is held off by a save_total_limit of None meanwhile)."""

    _staging: str | None = None

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        root = Path(super()._get_output_dir(trial))
        args = self.args
        ranks = checkpoint.Ranks(args.should_save, args.local_process_index == 0, args.world_size)
        keep, args.save_total_limit = args.save_total_limit, None
        try:
            with checkpoint.committed(root, self.state.global_step, ranks, keep) as staging:
                self._staging = str(staging)
                super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
            args.save_total_limit = keep


class StopAtMaxSteps:
    """Overrides `Trainer._run_epoch` (transformers): resumed from the checkpoint of the last
    step (a kill after that save, before the model was written), the Trainer would train one
    step beyond max_steps; the epoch is not entered instead."""

    def _run_epoch(self, *args, **kwargs):
        if 0 < self.state.max_steps <= self.state.global_step:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)


class TokenBudgetSteps:
    """Overrides `Trainer.training_step` (transformers): with `micro_batch_tokens`, one optimizer
    step's samples run as micro-batches of at most that many tokens (runner/train/microbatch.py).
    Relies on the Trainer passing the step's token count as `num_items_in_batch` and on a model
    that takes it (`model_accepts_loss_kwargs`): every part's loss is then its token sum over the
    step's count, so the parts' gradients add up to the step's. Gradients are exchanged between
    processes after the last part only."""

    micro_batch_tokens: int | None = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.micro_batch_tokens or num_items_in_batch is None:
            return super().training_step(model, inputs, num_items_in_batch)
        parts = microbatch.split(inputs, self.micro_batch_tokens)
        loss = 0
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                loss = loss + super().training_step(model, part, num_items_in_batch)
        return loss


class LogitsOnTargets:
    """Overrides `Trainer.compute_loss` (transformers): with `targets_only`, the output layer runs
    only at positions whose next token is trained (see only_targets)."""

    targets_only = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.targets_only and not return_outputs and "labels" in inputs:
            inputs = only_targets(inputs)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def only_targets(inputs: dict) -> dict:
    """The batch with the output layer restricted to positions whose next token is trained.

    `logits_to_keep` (a tensor of positions) makes the model run its head on those positions
    only, and `shift_labels` hands the loss the already aligned targets, so transformers' own
    loss, token counting and accumulation scaling stay in charge.
    """
    labels = inputs["labels"]
    keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().flatten()
    targets = labels[:, keep + 1]
    return {**inputs, "labels": targets, "shift_labels": targets, "logits_to_keep": keep}


def takes_logits_to_keep(model) -> bool:
    """Whether the model's forward restricts its head to given positions (transformers' own
    models do; remote code such as ChatGLM3's may not, and then computes every logit)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes = "logits_to_keep" in inspect.signature(base.forward).parameters
    if not takes:
        log.info("logits_on_targets_only: %s's forward takes no logits_to_keep; every position's "
                 "logits are computed", type(base).__name__)  # fmt: skip
    return takes


class AdapterOnlySave:
    """Extends `Trainer.save_model(output_dir, _internal_call)` (its private parameter passed on):
    a saved adapter holds the trained adapter only. TRL keeps the reference as a second adapter
    named 'ref' (continuing model.adapter), which PEFT saves into a subfolder of that name."""

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        import shutil

        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            shutil.rmtree(Path(output_dir or self.args.output_dir) / "ref", ignore_errors=True)


# --- TRL: data tokenized by runner -----------------------------------------------------------


class TokenizedPairs:
    """Overrides `DPOTrainer._prepare_dataset` (TRL): the pairs are tokenized already, with the
    job's template (runner/core/data/preference.py), in the columns DPO's collator reads
    (prompt_ids, chosen_ids, rejected_ids); TRL would apply its own chat template."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset


class TokenizedUnpaired:
    """Overrides `KTOTrainer._prepare_dataset` (TRL): tokenized already (prompt_ids,
    completion_ids, label); only KTO's KL pairs are added when `calculate_KL`: each prompt with
    the answer of its neighbour in the batch, as TRL builds them."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if not self.calculate_KL:
            return dataset

        def rotate(batch):
            return {"KL_completion_ids": batch["completion_ids"][-1:] + batch["completion_ids"][:-1]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


class TokenizedPairRows:
    """Overrides `tokenize_row` of TRL's experimental ORPOTrainer and CPOTrainer (orpo, simpo):
    runner's tokenized pair in the columns their collator reads (pair_rows)."""

    def tokenize_row(self, feature, model=None):
        return pair_rows(feature)


def pair_rows(row: dict) -> dict:
    """runner's tokenized pair (prompt_ids, chosen_ids, rejected_ids) in the columns TRL's
    experimental pair trainers read: prompt_*, and chosen_*/rejected_* as whole sequences whose
    labels mask the prompt."""
    prompt = row["prompt_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for side in ("chosen", "rejected"):
        ids = prompt + row[f"{side}_ids"]
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [IGNORE] * len(prompt) + row[f"{side}_ids"]
    return out


# --- TRL's PPO -------------------------------------------------------------------------------


class PPOWithoutTrainerInit:
    """TRL's experimental PPOTrainer builds itself without transformers' `Trainer.__init__`; two
    things it then uses are set here after its own __init__:
    - `is_distributed_loading_by_transformers`, which Trainer.__init__ sets and Trainer.save_model
      reads on every rank;
    - under DDP, TRL reaches the policy as `self.model.policy`, which the DDP wrapper hides: the
      wrapper gets that name too (no parameters move)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.is_distributed_loading_by_transformers = False
        if not hasattr(self.model, "policy"):
            object.__setattr__(self.model, "policy", self.accelerator.unwrap_model(self.model).policy)
