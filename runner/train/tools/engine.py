"""What generates for `runner serve`: many requests at once, each one cancellable.

- `Batched`: transformers' continuous batching (`ContinuousBatchingManager`): one background
  thread runs the model over every active request in each forward pass (paged KV cache, new
  requests join between steps, finished or cancelled ones leave), so a short request does not
  wait for a long one. Per-request sampling settings ride on its per-request logits processors;
  each request samples with its own random generator (`_Sampler`), so a `seed` reproduces an
  answer whatever else runs beside it.
- `Serial`: `model.generate` one request at a time, for models continuous batching cannot run:
  prompt-learning adapters (prefix, P-Tuning, prompt tuning add virtual tokens the paged forward
  never sees) and models without transformers' attention interface (remote code).

No lock is ever held across a client's pace: a request's tokens go to an asyncio queue the
request's handler reads; a client that goes away cancels its request and frees its slot.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """A generation failed inside the engine."""


@dataclass
class Job:
    """One request: its prompt and how to continue it."""

    prompt: list[int]
    max_new_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None


class Stream:
    """A job's new tokens as they are generated: `await stream.next()` gives the next list of new
    token ids, None once the job is done; `cancel()` stops it (the engine frees its slot)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancel_hook = None
        self.finished = False

    def feed(self, item) -> None:
        """From any thread: new token ids (a list), None (done) or an EngineError."""
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    async def next(self) -> list[int] | None:
        if self.finished:
            return None
        item = await self._queue.get()
        if item is None:
            self.finished = True
        elif isinstance(item, BaseException):
            self.finished = True
            raise item
        return item

    def cancel(self) -> None:
        """Stop the job (on the event loop's thread); a reader waiting in next() gets None."""
        if not self.finished:
            self.finished = True
            self._queue.put_nowait(None)
            if self._cancel_hook is not None:
                self._cancel_hook()


class Engine(Protocol):
    description: str

    def start(self) -> None: ...

    def submit(self, job: Job) -> Stream:
        """Queue a job (called on the event loop's thread)."""

    def close(self, timeout: float) -> bool:
        """Stop generating (pending jobs end); True when its thread is gone within timeout."""


def unbatchable(model) -> str | None:
    """Why continuous batching cannot run this model, or None."""
    peft = getattr(model, "active_peft_config", None)
    if peft is not None and getattr(peft, "is_prompt_learning", False):
        return f"{peft.peft_type.value} adapters add virtual tokens that batched generation does not see"
    inner = _inner(model)
    if not getattr(inner, "_supports_attention_backend", False):
        return f"{type(inner).__name__} does not use transformers' attention interface"
    return None


def create(loaded, kind: str = "auto", max_batch: int = 16) -> Engine:
    """The engine for a loaded model: `batched`, `serial`, or `auto` (batched where it can run)."""
    reason = unbatchable(loaded.model)
    if kind == "batched" and reason:
        raise EngineError(f"continuous batching cannot run this model: {reason}")
    if kind == "serial" or reason:
        if reason:
            log.info("one request at a time: %s", reason)
        return Serial(loaded)
    return Batched(loaded, max_batch)


def _inner(model):
    """The transformers model under a PEFT wrapper (its adapter layers are injected in place)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


class Batched:
    def __init__(self, loaded, max_batch: int) -> None:
        from runner.train.tools import cb_compat

        self.cb = cb_compat
        self.loaded = loaded
        self.sampler = cb_compat.Sampler()
        self.manager = cb_compat.manager(_inner(loaded.model), loaded, max_batch, self.sampler)
        self.description = f"continuous batching, up to {max_batch} requests per step"

    def start(self) -> None:
        self.manager.start()

    def submit(self, job: Job) -> Stream:
        stream = Stream(asyncio.get_running_loop())
        rid = f"req-{uuid.uuid4().hex}"
        slot = self.sampler.add(job.temperature > 0, job.seed)
        sent = 0

        def deliver(output) -> None:  # on the event loop's thread
            nonlocal sent
            if stream.finished:
                return
            tokens = list(output.generated_tokens)
            if len(tokens) > sent:
                stream.feed(tokens[sent:])
                sent = len(tokens)
            if output.error is not None:
                stream.feed(EngineError(output.error))
            if output.is_finished():
                self.sampler.remove(slot)
                stream.feed(None)

        def cancel() -> None:
            self.manager.cancel_request(rid)
            self.sampler.remove(slot)
            self.cb.forget_handler(self.manager, rid)

        stream._cancel_hook = cancel
        self.manager.register_result_handler(rid, deliver)
        sample = job.temperature > 0
        accepted = self.manager.add_request(
            job.prompt, request_id=rid, max_new_tokens=job.max_new_tokens, streaming=True,
            eos_token_id=list(self.loaded.stop_ids), **self.cb.request_kwargs(sample, job, slot),
        )  # fmt: skip
        if accepted is None:  # the manager is stopping
            self.sampler.remove(slot)
            self.cb.forget_handler(self.manager, rid)
            stream.feed(EngineError("the server is shutting down"))
        return stream

    def close(self, timeout: float) -> bool:
        if not self.manager.is_running():
            return True
        self.manager.stop(block=True, timeout=timeout, hard_stop=True)
        return not self.manager.is_running()


class Serial:
    """model.generate, one job at a time, in one thread; a cancelled job stops at its next token."""

    def __init__(self, loaded) -> None:
        self.loaded = loaded
        self.description = "one request at a time (model.generate)"
        self._jobs: queue.Queue = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="serve-generate", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Stream:
        stream = Stream(asyncio.get_running_loop())
        cancelled = threading.Event()
        stream._cancel_hook = cancelled.set
        self._jobs.put((job, stream, cancelled))
        return stream

    def close(self, timeout: float) -> bool:
        self._closing.set()
        self._jobs.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _work(self) -> None:
        while not self._closing.is_set():
            item = self._jobs.get()
            if item is None:
                break
            job, stream, cancelled = item
            if cancelled.is_set():
                continue
            try:
                self._generate(job, stream, cancelled)
                stream.feed(None)
            except Exception as e:  # the request fails, the server goes on
                log.exception("generation failed")
                stream.feed(EngineError(f"generation failed: {e}"))
        while True:  # what is still queued ends
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item[1].feed(EngineError("the server is shutting down"))

    def _generate(self, job: Job, stream: Stream, cancelled: threading.Event) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        closing = self._closing

        class Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                done = cancelled.is_set() or closing.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        class Tokens:  # transformers' streamer interface: the prompt first, then each new token
            prompt_seen = False

            def put(self, value) -> None:
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                if not cancelled.is_set():
                    stream.feed([int(t) for t in value.reshape(-1).tolist()])

            def end(self) -> None:
                pass

        loaded = self.loaded
        ids = torch.tensor([job.prompt], device=loaded.model.device)
        sample = job.temperature > 0
        if sample:
            torch.manual_seed(job.seed if job.seed is not None else int.from_bytes(os.urandom(4), "little"))
        options = {"temperature": job.temperature, "top_p": job.top_p, "top_k": 0} if sample else {
            "temperature": None, "top_p": None, "top_k": None}  # fmt: skip
        with torch.no_grad():
            loaded.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=job.max_new_tokens,
                do_sample=sample, eos_token_id=loaded.stop_ids, pad_token_id=loaded.tokenizer.pad_token_id,
                stopping_criteria=StoppingCriteriaList([Stop()]), streamer=Tokens(), **options,
            )  # fmt: skip
