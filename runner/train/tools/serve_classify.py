"""The HTTP endpoints `runner serve` offers for a classifier (a cls or ner run, or its export).

    POST /v1/classify  {"input": "text" | ["text", ...], "text_pair": ... (stage cls, optional)}
    ->  {"object": "list", "model": NAME, "data": [{"index": 0, "label": "好评", "score": 0.97,
         "scores": {"好评": 0.97, "差评": 0.03}}, ...], "usage": {"prompt_tokens": N}}

A multi-label classifier answers "labels" (those at or above its threshold) instead of "label"; a
token classifier (ner) answers each text's "entities" ({"type", "text", "start", "end", "score"},
character offsets into the text) and its "words" with their tags, the words as its tokenizer splits
the text. GET /v1/models and /health are as for a chat model; the chat and completion endpoints
answer 400 with code "model_not_generative", saying what to call instead. With RUNNER_API_KEY set,
every request but /health must carry `Authorization: Bearer KEY`; errors have OpenAI's body.
Requests are answered one at a time (a batch of inputs in one request is one forward pass).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from runner.train.tools.api import ApiError, Limits, answer_errors_as_openai, list_the_model, read_request

log = logging.getLogger(__name__)


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    input: str | list[str] = Field(description="A text, or a list of texts labelled together.")
    text_pair: str | list[str] | None = Field(None, description="stage cls: each text's second text.")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def pairs(self) -> list[str] | None:
        if self.text_pair is None:
            return None
        return [self.text_pair] if isinstance(self.text_pair, str) else list(self.text_pair)


def create_classifier_app(loaded, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """`loaded`: a runner.train.tools.classifier.Classifier."""
    from runner.train.tools import classifier

    limits = limits or Limits()
    created = int(time.time())
    lock = threading.Lock()  # one forward pass at a time
    app = FastAPI(title="runner serve (classifier)", docs_url=None, redoc_url=None, openapi_url=None)
    kind = (
        "a token classifier (stage ner)" if loaded.labels.task == "token" else "a text classifier (stage cls)"
    )

    answer_errors_as_openai(app, api_key)

    def card() -> dict:
        return {"id": loaded.name, "object": "model", "created": created, "owned_by": "runner",
                "task": "token-classification" if loaded.labels.task == "token" else "text-classification",
                "labels": list(loaded.labels.names), "multi_label": loaded.labels.multi_label}  # fmt: skip

    @app.get("/health")
    async def health():
        return {"status": "ok", "engine": "classifier"}

    list_the_model(app, loaded.name, card)

    def not_generative() -> None:
        raise ApiError(
            400, f"'{loaded.name}' is {kind}: it labels text and writes none, so it has no chat or completion "
            'endpoint; POST /v1/classify {"input": "your text"} for its labels', "model_not_generative",
        )  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        not_generative()

    @app.post("/v1/completions")
    async def completions(request: Request):
        not_generative()

    @app.post("/v1/classify")
    async def labels(request: Request):
        req, _ = await read_request(request, limits, ClassifyRequest)
        if req.model and req.model != loaded.name:
            raise ApiError(404, f"no model '{req.model}'; this server serves '{loaded.name}'", "model_not_found",
                           "model")  # fmt: skip
        texts, pairs = req.texts(), req.pairs()
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise ApiError(400, "input: give a non-empty text, or a list of them", "invalid_request", "input")
        if len(texts) > limits.max_batch:
            raise ApiError(400, f"input: at most {limits.max_batch} texts in one request (got {len(texts)})",
                           "invalid_request", "input")  # fmt: skip
        if pairs is not None and (loaded.labels.task == "token" or len(pairs) != len(texts)):
            why = (
                "a token classifier tags one text" if loaded.labels.task == "token" else "give one per input"
            )
            raise ApiError(400, f"text_pair: {why}", "invalid_request", "text_pair")
        enc = loaded.tokenizer(texts, pairs)
        used = sum(len(ids) for ids in enc["input_ids"])
        longest = max(len(ids) for ids in enc["input_ids"])
        if longest > loaded.context:
            raise ApiError(400, f"an input takes {longest} tokens; this model reads at most {loaded.context}",
                           "context_length_exceeded", "input")  # fmt: skip

        def run() -> list[dict]:
            with lock:
                if loaded.labels.task == "token":
                    return classifier.tag(loaded, texts)
                return classifier.classify(loaded, texts, pairs)

        try:
            results = await asyncio.wait_for(asyncio.to_thread(run), limits.timeout)
        except TimeoutError:
            raise ApiError(504, f"the labels took longer than {limits.timeout:g} s", "timeout",
                           kind="server_error") from None  # fmt: skip
        data = [{"index": i, **r} for i, r in enumerate(results)]
        return {"object": "list", "model": loaded.name, "data": data, "usage": {"prompt_tokens": used}}

    return app
