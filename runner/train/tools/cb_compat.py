"""Every transformers continuous-batching internal that `runner serve` relies on, in one place.

transformers' `ContinuousBatchingManager` samples every request of a batch with one global
random generator and knows per-request temperature, top-k and top-p only. runner adds one
logits processor, `Sampler`, last in the manager's list: it draws each sampling request's token
with that request's own `torch.Generator` (seeded by the request's `seed`, else at random) and
leaves a single candidate, so the manager's own draw can only pick it. Greedy requests are
top-k 1. The bets on the library, each checked by tests/unit/test_cb_compat.py:
- the manager's `logit_processor` list is read when its batch processor is created (at start),
  so a processor appended before `start()` runs, with `tensors_required` arguments per row;
- rows of the scores come in the order `prepare_tensor_args` saw the requests;
- `output_router.result_handlers` holds the handler of each request (a cancelled request gets
  no final output, so runner removes its handler itself).
CUDA graphs are off: the sampler's per-row draw is host-driven Python, which a graph cannot hold.
"""

from __future__ import annotations

import math
import os
import threading

import torch
from transformers import GenerationConfig
from transformers.generation.configuration_utils import ContinuousBatchingConfig
from transformers.generation.continuous_batching import cb_logits_processors as cbl

SLOT = "runner_slot"  # the per-request argument naming the request's generator
NO_TOP_K = 1 << 30  # "no top-k" for the per-request top-k (0 would mean keep one token)


class Sampler(cbl.ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {SLOT: int}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._seeds: dict[int, int] = {}
        self._generators: dict[int, torch.Generator] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, sample: bool, seed: int | None) -> int:
        """A slot for a new request: -1 for a greedy one, else its generator's number."""
        if not sample:
            return -1
        with self._lock:
            slot = self._next
            self._next = (self._next + 1) % (1 << 31)
            self._seeds[slot] = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
        return slot

    def remove(self, slot: int) -> None:
        with self._lock:
            self._seeds.pop(slot, None)
            self._generators.pop(slot, None)

    def _generator(self, slot: int, device: torch.device) -> torch.Generator | None:
        with self._lock:
            gen = self._generators.get(slot)
            if gen is None and slot in self._seeds:
                gen = self._generators[slot] = torch.Generator(device=device).manual_seed(self._seeds[slot])
            return gen

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(-1)

    def prepare_tensor_args(self, requests_with_new_token) -> torch.Tensor:
        slots = [r.state.logit_processor_kwargs.get(SLOT, -1) for r in requests_with_new_token]
        return torch.tensor(slots, dtype=torch.int32, device="cpu")

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        slots = tensor_arg[: scores.size(0)].tolist()
        for row, slot in enumerate(slots):
            if slot < 0:
                continue
            gen = self._generator(slot, scores.device)
            if gen is None:  # cancelled while in this step
                continue
            probs = torch.softmax(scores[row].float(), dim=-1)
            token = torch.multinomial(probs, 1, generator=gen)
            scores[row].fill_(-math.inf)
            scores[row, token] = 0.0
        return scores


def manager(model, loaded, max_batch: int, sampler: Sampler):
    """A continuous-batching manager for `model` (not started) with `sampler` installed."""
    config = GenerationConfig(
        # Sampling with warpers present: each request sets its own temperature, top-k and top-p
        # (greedy is top-k 1); these values only make transformers create the warpers.
        do_sample=True, temperature=0.5, top_k=50, top_p=0.5, max_new_tokens=16,
        eos_token_id=list(loaded.stop_ids), pad_token_id=loaded.tokenizer.pad_token_id,
    )  # fmt: skip
    # No CUDA graphs (nor the async batching that comes with them): `Sampler` reads its rows on the
    # host and draws per row, which a captured graph would freeze.
    options = {"per_request_processors": True, "max_requests_per_batch": max_batch, "max_queue_size": 0,
               "use_cuda_graph": False, "use_async_batching": False}  # fmt: skip
    if model.device.type == "cpu":
        # Room for max_batch requests of the full context, not the 60% of the machine's memory
        # transformers takes by default on CPU. On a GPU it sizes the cache from free memory.
        page = 256
        options.update(page_size=page, num_blocks=max_batch * math.ceil(loaded.context / page) + 1)
    manager = model.init_continuous_batching(
        generation_config=config, continuous_batching_config=ContinuousBatchingConfig(**options)
    )
    processors = manager.logit_processor
    kinds = {type(p) for p in processors.logits_processor}
    wanted = {cbl.ContinuousBatchingTemperatureLogitsWarper, cbl.ContinuousBatchingTopKLogitsWarper,
              cbl.ContinuousBatchingTopPLogitsWarper}  # fmt: skip
    if not wanted <= kinds:
        raise RuntimeError(f"transformers' continuous batching has no per-request {sorted(k.__name__ for k in wanted - kinds)}; "
                           "runner's serve engine needs them (runner/train/tools/cb_compat.py)")  # fmt: skip
    processors.logits_processor.append(sampler)
    processors.tensors_required += 1
    processors.supported_keys.update(sampler.supported_kwargs)
    processors.do_processing = True
    return manager


def request_kwargs(sample: bool, job, slot: int) -> dict:
    """The per-request logits-processor arguments of a job."""
    if not sample:
        return {"temperature": 1.0, "top_k": 1, "top_p": 1.0, SLOT: -1}
    return {"temperature": float(job.temperature), "top_k": NO_TOP_K, "top_p": float(job.top_p), SLOT: slot}


def forget_handler(manager, request_id: str) -> None:
    router = manager.output_router
    with router._lock:
        router.result_handlers.pop(request_id, None)
