"""The serve engine on transformers' continuous batching, in process: what runner/train/tools/cb_compat.py
bets on in the library still holds (a failure here names that module: the library changed under it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
BETS = "runner/train/tools/cb_compat.py's bet on transformers' continuous batching no longer holds"


@pytest.fixture(scope="module")
def loaded(tiny_model: Path):
    from runner.train.tools.inference import load

    return load(tiny_model)


def _prompts(loaded) -> list[list[int]]:
    from runner.train.tools.inference import prompt_ids

    return [
        prompt_ids(loaded, [{"role": "user", "content": q}])
        for q in ("你好", "Who are you?", "介绍一下你自己")
    ]


async def _tokens(stream) -> list[int]:
    out: list[int] = []
    while (ids := await stream.next()) is not None:
        out += ids
    return out


def _run(engine, jobs) -> list[list[int]]:
    async def main():
        return await asyncio.gather(*(_tokens(engine.submit(job)) for job in jobs))

    return asyncio.run(main())


def test_batched_greedy_answers_are_generates_and_seeds_reproduce(loaded):
    import torch

    from runner.train.tools.engine import Batched, Job

    engine = Batched(loaded, max_batch=4)
    engine.start()
    try:
        prompts = _prompts(loaded)
        together = _run(engine, [Job(p, 12) for p in prompts])
        for prompt, got in zip(prompts, together, strict=True):
            ids = torch.tensor([prompt])
            want = loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                         do_sample=False, eos_token_id=loaded.stop_ids,
                                         pad_token_id=loaded.tokenizer.pad_token_id)[0, len(prompt):].tolist()  # fmt: skip
            assert got == want, f"greedy (top-k 1 per request) differs from generate(): {BETS}"
        seeded = Job(prompts[0], 16, temperature=1.0, seed=11)
        (alone,) = _run(engine, [seeded])
        beside = _run(
            engine, [Job(prompts[1], 16, temperature=1.0), seeded, Job(prompts[2], 16, temperature=0.7)]
        )
        assert beside[1] == alone, f"a seeded request's tokens depend on its neighbours: {BETS}"
        (other,) = _run(engine, [Job(prompts[0], 16, temperature=1.0, seed=12)])
        assert other != alone
        assert not engine.sampler._seeds, "finished requests left their generators behind"
    finally:
        assert engine.close(timeout=10)


def test_a_cancelled_request_leaves_nothing_behind(loaded):
    from runner.train.tools.engine import Batched, Job

    engine = Batched(loaded, max_batch=2)
    engine.start()
    try:

        async def main():
            stream = engine.submit(Job(_prompts(loaded)[0], 500, temperature=1.0))
            first = await stream.next()
            stream.cancel()
            assert await stream.next() is None  # a reader waiting on it is released
            await asyncio.sleep(0.3)
            return first

        assert asyncio.run(main())
        assert not engine.manager.output_router.result_handlers, (
            f"a cancelled request's handler stayed: {BETS}"
        )
        assert not engine.sampler._seeds
        assert _run(engine, [Job(_prompts(loaded)[1], 4)])[0]  # and the engine goes on
    finally:
        assert engine.close(timeout=10)
