"""An OpenAI-compatible HTTP server for a run's result or an exported model:
`python -m runner.train.tools.serve TARGET [--host 127.0.0.1] [--port 8000] [--name NAME]`.

GET /v1/models and POST /v1/chat/completions (streamed as server-sent events with
"stream": true). With RUNNER_API_KEY set in its environment every request must carry
`Authorization: Bearer KEY`. Every refusal is an HTTP 4xx with OpenAI's error body
{"error": {"message", "type", "param", "code"}}.

A classifier (a cls or ner run, or its export) is served with POST /v1/classify instead
(runner/train/tools/serve_classify.py); its chat endpoints refuse with a message saying so.

Requests are generated together (runner/train/tools/engine.py): up to --max-batch at once,
--max-queue more waiting, and beyond that a 429 with Retry-After. A client that disconnects
cancels its generation; a request running past --timeout seconds ends with a 504 (or an error
event in a stream). SIGTERM stops taking requests, lets running ones finish for --drain seconds,
cancels the rest and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from runner.core import offline
from runner.core.errors import RunnerError
from runner.train.tools.api import ApiError, Limits, answer_errors_as_openai, list_the_model, read_request

log = logging.getLogger(__name__)
SEED_RANGE = (-(1 << 63), 1 << 64)  # what torch.Generator.manual_seed takes
# OpenAI request fields this server does not implement: refused when set to anything but "off",
# never silently ignored. Fields that change nothing in the answer (user, metadata...) are accepted.
UNSUPPORTED = {
    "frequency_penalty": lambda v: v not in (None, 0, 0.0),
    "presence_penalty": lambda v: v not in (None, 0, 0.0),
    "logit_bias": lambda v: bool(v),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: v not in (None, 0),
    "tools": lambda v: bool(v),
    "functions": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none"),
    "function_call": lambda v: v not in (None, "none"),
    "response_format": lambda v: v not in (None, {"type": "text"}),
    "audio": lambda v: v is not None,
    "prediction": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
}


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # fields that change nothing here (user, metadata, store...)
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = Field(None, ge=SEED_RANGE[0], lt=SEED_RANGE[1])
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, f"stop: at most 4 sequences (got {len(stops)})", "invalid_request", "stop")
        if any(not s for s in stops):
            raise ApiError(400, "stop: an empty stop sequence would end every answer at once", "invalid_request",
                           "stop")  # fmt: skip
        return stops


class Text:
    """The answer's text as its tokens arrive: the text new since the last call, held back while
    it ends in an incomplete character or in what may become a stop sequence."""

    def __init__(self, tokenizer, stop_ids: list[int], stops: list[str]) -> None:
        self.tokenizer, self.stop_ids, self.stops = tokenizer, set(stop_ids), stops
        self.ids: list[int] = []
        self.sent = 0
        self.stopped = False  # a stop sequence ended it

    def add(self, ids: list[int]) -> str:
        self.ids += ids
        text = self.tokenizer.decode(
            [i for i in self.ids if i not in self.stop_ids], skip_special_tokens=True
        )
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            end = min(hits)
        else:
            end = len(text.rstrip("\ufffd"))  # a character whose bytes have not all arrived
            for s in self.stops:  # the longest tail that may grow into a stop sequence
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[end - k : end] == s[:k]:
                        end -= k
                        break
        piece, self.sent = text[self.sent : max(end, self.sent)], max(end, self.sent)
        return piece

    def finish(self) -> str:
        """What is still held back, once no more tokens come."""
        if self.stopped:
            return ""
        text = self.tokenizer.decode(
            [i for i in self.ids if i not in self.stop_ids], skip_special_tokens=True
        )
        piece, self.sent = text[self.sent :], len(text)
        return piece

    def reason(self, max_new_tokens: int) -> str:
        if self.stopped or (self.ids and self.ids[-1] in self.stop_ids):
            return "stop"
        return "length" if len(self.ids) >= max_new_tokens else "stop"


class _EventStream(StreamingResponse):
    """Server-sent events that stop at a client's disconnect, whichever ASGI version the server
    speaks; `release` (the request's cleanup: its generation cancelled) runs on every way out,
    started or not."""

    def __init__(self, content, release, **kwargs) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        async def body() -> None:
            with contextlib.suppress(OSError):
                await self.stream_response(send)

        sending = asyncio.ensure_future(body())
        watching = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            await asyncio.wait({sending, watching}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # First the generation: cancelled, its slot back, and the body sees its end at once even
            # where a task's cancellation is lost (asyncio.wait_for can swallow one).
            self.release()
            for task in (sending, watching):
                task.cancel()
            await asyncio.gather(sending, watching, return_exceptions=True)
            await self.body_iterator.aclose()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(loaded, engine, api_key: str | None = None, limits: Limits | None = None):
    from runner.train.tools import inference
    from runner.train.tools.engine import EngineError, Job

    limits = limits or Limits()
    created = int(time.time())
    active = 0  # requests admitted and not yet answered

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        log.info("generating with %s", engine.description)
        yield
        if not engine.close(timeout=5):
            log.error("the generation thread did not stop within 5 s")
            app.state.stuck = True

    app = FastAPI(title="runner serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.stuck = False

    answer_errors_as_openai(app, api_key)

    def model_card() -> dict:
        return {"id": loaded.name, "object": "model", "created": created, "owned_by": "runner"}

    @app.get("/health")
    async def health():
        """Up, and how many requests run or wait (no key needed: it says nothing about the model)."""
        return {"status": "ok", "requests": active, "engine": engine.description}

    list_the_model(app, loaded.name, model_card)

    async def read(request: Request) -> ChatRequest:
        req, body = await read_request(request, limits, ChatRequest)
        for name, refused in UNSUPPORTED.items():
            if refused(body.get(name) if isinstance(body, dict) else None):
                raise ApiError(400, f"{name} is not supported by this server (send it unset, or off)",
                               "unsupported_parameter", name)  # fmt: skip
        return req

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        nonlocal active
        req = await read(request)
        try:
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request", "messages") from None
        stops = req.stops()
        if req.model and req.model != loaded.name:
            raise ApiError(404, f"no model '{req.model}'; this server serves '{loaded.name}'", "model_not_found",
                           "model")  # fmt: skip
        prompt = inference.prompt_ids(loaded, messages)
        wanted = req.max_completion_tokens or req.max_tokens
        if problem := inference.context_problem(loaded, len(prompt), wanted):
            raise ApiError(400, problem, "context_length_exceeded", "messages")
        if active >= limits.max_batch + limits.max_queue:
            raise ApiError(429, f"the server is busy ({active} requests running or waiting); retry shortly",
                           "rate_limit_exceeded", kind="rate_limit_error", headers={"Retry-After": "2"})  # fmt: skip
        job = Job(
            prompt=prompt, max_new_tokens=min(wanted or limits.default_max_tokens, loaded.context - len(prompt)),
            temperature=req.temperature or 0.0, top_p=req.top_p or 1.0, seed=req.seed,
        )  # fmt: skip
        active += 1
        try:
            stream = engine.submit(job)
        except BaseException:
            active -= 1
            raise
        released = False

        def release() -> None:
            """Once per request, however it ends: its slot back, its generation cancelled."""
            nonlocal active, released
            if not released:
                released = True
                active -= 1
                stream.cancel()

        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        text = Text(loaded.tokenizer, loaded.stop_ids, stops)

        def usage() -> dict:
            return {"prompt_tokens": len(prompt), "completion_tokens": len(text.ids),
                    "total_tokens": len(prompt) + len(text.ids)}  # fmt: skip

        async def pieces():
            """The answer's text, piece by piece; the job is cancelled on every way out."""
            deadline = time.monotonic() + limits.timeout
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    ids = await asyncio.wait_for(stream.next(), left)
                    if ids is None:
                        if tail := text.finish():
                            yield tail
                        return
                    if piece := text.add(ids):
                        yield piece
                    if text.stopped:
                        return
            finally:
                stream.cancel()

        if not req.stream:
            try:
                collect = asyncio.ensure_future(_collect(pieces()))
                gone = asyncio.ensure_future(_disconnected(request))
                await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
                gone.cancel()
                if not collect.done():  # the client went away: nobody to answer
                    release()
                    collect.cancel()
                    await asyncio.gather(collect, return_exceptions=True)
                    return JSONResponse(ApiError(499, "client closed the request", "client_closed").body(),
                                        status_code=499)  # fmt: skip
                try:
                    answer = collect.result()
                except TimeoutError:
                    raise ApiError(504, f"the answer took longer than {limits.timeout:g} s", "timeout",
                                   kind="server_error") from None  # fmt: skip
                except EngineError as e:
                    raise ApiError(503, str(e), "generation_failed", kind="server_error") from None
            finally:
                release()
            return {
                "id": rid, "object": "chat.completion", "created": now, "model": loaded.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.strip()},
                             "finish_reason": text.reason(job.max_new_tokens)}],
                "usage": usage(),
            }  # fmt: skip

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": loaded.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def error_event(e: ApiError) -> str:
            return f"data: {json.dumps(e.body(), ensure_ascii=False)}\n\n"

        async def events():
            generated = pieces()
            try:
                yield chunk({"role": "assistant", "content": ""})
                async for piece in generated:
                    yield chunk({"content": piece})
                yield chunk({}, text.reason(job.max_new_tokens))
                if req.stream_options and req.stream_options.include_usage:
                    body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": loaded.name,
                            "choices": [], "usage": usage()}  # fmt: skip
                    yield f"data: {json.dumps(body)}\n\n"
                yield "data: [DONE]\n\n"
            except TimeoutError:
                yield error_event(ApiError(504, f"the answer took longer than {limits.timeout:g} s", "timeout",
                                           kind="server_error"))  # fmt: skip
            except EngineError as e:
                yield error_event(ApiError(503, str(e), "generation_failed", kind="server_error"))
            except Exception as e:  # the stream ends with an error event, never cut short silently
                log.exception("stream failed")
                yield error_event(ApiError(500, f"internal error: {type(e).__name__}: {e}", "internal_error",
                                           kind="server_error"))  # fmt: skip
            finally:
                await generated.aclose()
                release()

        return _EventStream(events(), release, media_type="text/event-stream")

    return app


async def _collect(pieces) -> str:
    return "".join([piece async for piece in pieces])


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train.tools.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("target", help="a run directory or an exported model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", help="the model id clients name [default: the run's or directory's name]")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer length when a request sets none")
    parser.add_argument("--max-batch", type=int, default=16, help="requests generated together")
    parser.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those (then 429)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one request may take")
    parser.add_argument("--drain", type=float, default=5, help="seconds running requests get after SIGTERM")
    parser.add_argument("--engine", choices=["auto", "batched", "serial"], default="auto",
                        help="continuous batching, or one request at a time [auto: batching where the model allows]")  # fmt: skip
    parser.add_argument("--uds", help="listen on this unix socket instead (in a container without network)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for noisy in ("transformers.generation.continuous_batching",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import uvicorn

    from runner.core.target import resolve
    from runner.train.tools import engine as engines
    from runner.train.tools.inference import load

    try:
        target = resolve(args.target)
        if target.classifier:
            return _serve_classifier(target, args)
        loaded = load(args.target, purpose="serve")
        engine = engines.create(loaded, args.engine, args.max_batch)
    except (RunnerError, engines.EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    if args.name:
        loaded.name = args.name
    api_key = os.environ.get("RUNNER_API_KEY") or None
    limits = Limits(args.max_batch, args.max_queue, args.timeout, args.max_tokens)
    app = create_app(loaded, engine, api_key, limits)
    where = f"unix socket {args.uds}" if args.uds else f"http://{args.host}:{args.port}/v1"
    print(f"serving {loaded.name} on {where} ({'API key required' if api_key else 'no API key'}; "
          f"{engine.description})", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, uds=args.uds, log_level="warning",
                timeout_graceful_shutdown=args.drain)  # fmt: skip
    if app.state.stuck:  # a generation thread that would keep the process alive
        os._exit(1)
    return 0


def _serve_classifier(target, args) -> int:
    import uvicorn

    from runner.train.tools.classifier import load_classifier
    from runner.train.tools.serve_classify import create_classifier_app

    loaded = load_classifier(target)
    if args.name:
        loaded.name = args.name
    api_key = os.environ.get("RUNNER_API_KEY") or None
    app = create_classifier_app(
        loaded, api_key, Limits(args.max_batch, args.max_queue, args.timeout, args.max_tokens)
    )
    where = f"unix socket {args.uds}" if args.uds else f"http://{args.host}:{args.port}/v1"
    print(f"serving {loaded.name} on {where} ({'API key required' if api_key else 'no API key'}; a classifier: "
          "POST /v1/classify)", flush=True)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, uds=args.uds, log_level="warning",
                timeout_graceful_shutdown=args.drain)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
