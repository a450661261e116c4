"""Stage ppo: the policy generates answers to the data's prompts, the reward model of an rm run
scores them, and PPO (TRL's experimental PPOTrainer, which TRL 1.12 is the last release to ship)
moves the policy towards higher scores, held near its starting point by a KL penalty.

- policy: model.path with the job's method, as sft builds it; continuing an sft run
  (model.adapter) its adapter trains on, so the saved adapter serves on the base alone as every
  other stage's does (chat, export, a later model.adapter).
- reference: with an adapter method the policy with the adapter switched off (a new adapter: the
  base), or, continuing model.adapter, a frozen copy of that adapter as training starts; never a
  second copy of the model. With full or freeze, TRL's frozen copy of the model.
- reward model: ppo.reward_model (resolved to a directory: an rm run's adapter/ or a reward
  model), its adapter and value head merged into its base; frozen.
- value model: a copy of the reward model, trained beside the policy; not saved.

The result is what the other stages save: adapter/ (or model/) with the tokenizer.
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
from pathlib import Path

from transformers import TrainerCallback

from runner.core.data.templates import stop_token_ids
from runner.core.errors import RunnerError
from runner.core.jobspec.job import JobSpec
from runner.core.rundir import RunDir
from runner.train import compat, dataset
from runner.train import trainer as loop
from runner.train import trl_stages as tuning
from runner.train.dataset import LENGTH
from runner.train.methods import PEFT_METHODS, apply_method
from runner.train.model import attention, fit_vocab, load_model, tokenizer_for, weight_dtype

log = logging.getLogger(__name__)
REF = "ref"  # the frozen copy of a continued adapter


def run(spec: JobSpec, run_dir: Path) -> dict:
    loop.seed_everything(spec)
    tokenizer = tokenizer_for(spec)
    train_ds, _ = dataset.build(spec, tokenizer)
    train_ds = train_ds.remove_columns([LENGTH])
    with loop.model_loading(spec, run_dir):
        policy = load_model(spec)
        policy = apply_method(policy, spec, train_embeddings=fit_vocab(policy, tokenizer))
        if spec.model.adapter:  # the reference: the adapter as training starts
            policy.load_adapter(spec.model.adapter, adapter_name=REF, is_trainable=False)
        reward = load_reward_model(spec, tokenizer)
        value = copy.deepcopy(reward).requires_grad_(True).train()
    log.info("reference: %s", "a frozen copy of the starting adapter" if spec.model.adapter else
             "the base, adapter switched off" if spec.method.type in PEFT_METHODS else "a frozen copy of the model")  # fmt: skip
    make = _maker(reward, value)
    metrics = loop.train(spec, run_dir, policy, tokenizer, train_ds, None, None, make=make)
    return tuning.record_peak_memory(run_dir, metrics)


def load_reward_model(spec: JobSpec, tokenizer):
    """The reward model of ppo.reward_model, merged into one frozen sequence classifier.

    An rm run's adapter/ loads on that run's base (with the sft adapter it merged, if any); another
    adapter on its config's base, else on model.path; a whole model as it is."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForSequenceClassification

    path = Path(spec.ppo.reward_model)
    base, merged = _reward_base(path, spec)

    def classifier(where: str):
        return AutoModelForSequenceClassification.from_pretrained(
            where, num_labels=1, local_files_only=True, trust_remote_code=spec.model.trust_remote_code,
            dtype=weight_dtype(spec), attn_implementation=attention(spec), pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip

    if base is None:
        model = classifier(str(path))
        fit_vocab(model, tokenizer)
    else:
        model = classifier(base)
        fit_vocab(model, tokenizer)
        for adapter in [*merged, str(path)]:
            config = PeftConfig.from_pretrained(adapter)
            if adapter != str(path):
                config.task_type = None  # an sft adapter, as stage rm merged it (runner/train/stages/rm.py)
            model = PeftModel.from_pretrained(model, adapter, config=config).merge_and_unload()
    log.info("reward model: %s%s", path, f" on {base}" if base else "")
    model.config.use_cache = False
    return model.requires_grad_(False).eval()


def _reward_base(path: Path, spec: JobSpec) -> tuple[str | None, list[str]]:
    """(base model directory, adapters to merge into it first) of a reward adapter; (None, []) for
    a whole model."""
    import json

    if not (path / "adapter_config.json").is_file():
        return None, []
    run = RunDir(path.parent)
    if run.spec_file.is_file():  # an rm run's adapter/: its own base and the sft adapter it merged
        base, adapter = run.trained_on()
        return base, [adapter] if adapter else []
    named = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if named and (Path(named) / "config.json").is_file():
        return named, []
    return spec.model.path, []


class _Stopped(Exception):
    """A stop was requested (SIGTERM): TRL's PPO loop has no way out but this."""


class _StopInPPO(TrainerCallback):
    """TRL's PPO loop calls the callbacks' on_step_end but never reads should_training_stop:
    a stop requested before the last step leaves the loop by raising _Stopped."""

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_training_stop and state.global_step < state.max_steps:
            raise _Stopped


def _maker(reward, value):
    from transformers.trainer_utils import TrainOutput
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class Trainer(compat.PPOWithoutTrainerInit, compat.AdapterOnlySave, PPOTrainer):
        def log(self, logs, start_time=None):
            if "loss/policy_avg" in logs:  # the loss PPO minimises: the policy's plus the weighted value loss
                logs = {"loss": logs["loss/policy_avg"] + self.args.vf_coef * logs["loss/value_avg"], **logs}
            super().log(logs, start_time)

        def train(self, resume_from_checkpoint=None, **kwargs):
            if resume_from_checkpoint:
                log.warning("stage ppo cannot resume (TRL's PPO trainer keeps no resumable state); "
                            "training starts again from step 0")  # fmt: skip
            self.add_callback(_StopInPPO())  # after StopOnSignal, which train() added before
            try:
                super().train()
            except _Stopped:
                log.info(
                    "stopped at step %d; stage ppo keeps no checkpoint to resume from", self.state.global_step
                )
            losses = [h["loss"] for h in self.state.log_history if "loss" in h]
            loss = statistics.fmean(losses) if losses else float("nan")
            return TrainOutput(self.state.global_step, loss, {"train_loss": loss})

    def make(spec, run_dir, model, tokenizer, train_ds, eval_ds, collator):
        p, t = spec.ppo, spec.training
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the API is pinned (trl>=1.12,<1.13)
        world = int(os.environ.get("WORLD_SIZE", "1"))
        episodes = t.max_steps * t.per_device_train_batch_size * t.gradient_accumulation_steps * world
        stop = stop_token_ids(tokenizer, spec.model.template)[-1:]  # the template's end of turn
        config = {
            "response_length": p.response_length, "temperature": p.temperature, "kl_coef": p.kl_coef,
            "num_ppo_epochs": p.ppo_epochs, "cliprange": p.cliprange, "vf_coef": p.vf_coef,
            "missing_eos_penalty": p.missing_eos_penalty, "stop_token_id": stop[0] if stop else None,
            "total_episodes": episodes if t.max_steps > 0 else None, "num_mini_batches": 1,
            "local_rollout_forward_batch_size": t.per_device_train_batch_size, "num_sample_generations": 0,
        }  # fmt: skip
        if spec.model.adapter:
            config |= {"model_adapter_name": "default", "ref_adapter_name": REF}
        args = loop.training_arguments(spec, run_dir, has_eval=False, args_class=PPOConfig, **config)
        args.save_strategy = "no"  # nothing to resume from: the result is saved at the end
        if len(train_ds) < args.per_device_train_batch_size * args.gradient_accumulation_steps:
            raise RunnerError(
                f"stage ppo has {len(train_ds)} prompt(s), fewer than one batch (per_device_train_batch_size "
                f"x gradient_accumulation_steps = {args.per_device_train_batch_size * args.gradient_accumulation_steps}); "
                "add prompts or lower them"
            )
        # TRL's PPO reads "eos" as the end of an answer (the missing-eos penalty): the template's end of turn.
        trainer_tokenizer = copy.deepcopy(tokenizer)
        if stop and stop[0] != tokenizer.eos_token_id:
            trainer_tokenizer.eos_token = tokenizer.convert_ids_to_tokens(stop[0])
        trainer = tuning.make(
            Trainer, PPOConfig, spec, run_dir, model, trainer_tokenizer, train_ds, None, args=args,
            ref_model=None, reward_model=reward, value_model=value, data_collator=_LeftPadded(tokenizer.pad_token_id),
        )  # fmt: skip
        return trainer

    return make


class _LeftPadded:
    """Prompts padded on the left, so every answer is generated right after its prompt."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        longest = max(len(f["input_ids"]) for f in features)
        ids = [[self.pad_id] * (longest - len(f["input_ids"])) + list(f["input_ids"]) for f in features]
        return {"input_ids": torch.tensor(ids)}
