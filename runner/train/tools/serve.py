"""An OpenAI-compatible HTTP server for a run's result or an exported model:
`python -m runner.train.tools.serve TARGET [--host 127.0.0.1] [--port 8000] [--name NAME]`.

GET /v1/models and POST /v1/chat/completions (streamed as server-sent events with
"stream": true). With RUNNER_API_KEY set in its environment every request must carry
`Authorization: Bearer KEY`. Every refusal is an HTTP 4xx with OpenAI's error body
{"error": {"message", "type", "param", "code"}}. One model, one generation at a time.
"""

from __future__ import annotations

import argparse
import hmac
import json
import logging
import os
import sys
import time
import uuid
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from runner.core import offline
from runner.core.errors import RunnerError

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20  # bytes of one request
DRAIN_LIMIT = 64 << 20  # bytes read of a request over MAX_BODY before the connection is dropped


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


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI fields this server ignores (user, logprobs...)
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    frequency_penalty: float | None = None
    presence_penalty: float | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error"):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def create_app(loaded, api_key: str | None = None, max_body: int = MAX_BODY, default_max_tokens: int = 512):
    from runner.train.tools import inference

    app = FastAPI(title="runner serve", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(ApiError(e.status_code, str(e.detail), code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse(ApiError(400, str(e), "invalid_request").body(), status_code=400)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if api_key is not None:
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), api_key.encode()):
                error = ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                 "invalid_api_key", kind="authentication_error")  # fmt: skip
                return JSONResponse(error.body(), status_code=401)
        return await call_next(request)

    def model_card() -> dict:
        return {"id": loaded.name, "object": "model", "created": created, "owned_by": "runner"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str):
        if name != loaded.name:
            raise ApiError(
                404, f"no model '{name}'; this server serves '{loaded.name}'", "model_not_found", "model"
            )
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        # Read to the end (a client still sending would see a broken connection instead of the
        # answer), keeping at most max_body bytes; give up on a body past DRAIN_LIMIT.
        kept, size = [], 0
        async for part in request.stream():
            size += len(part)
            if size <= max_body:
                kept.append(part)
            elif size > DRAIN_LIMIT:
                break
        if size > max_body:
            raise ApiError(413, f"request body over {max_body} bytes", "request_too_large")
        raw = b"".join(kept)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise ApiError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None
        try:
            req = ChatRequest.model_validate(body)
            messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ApiError(400, f"{where}: {first['msg']}", "invalid_request", where or None) from None
        except ValueError as e:
            raise ApiError(400, str(e), "invalid_request", "messages") from None
        if req.model and req.model != loaded.name:
            raise ApiError(404, f"no model '{req.model}'; this server serves '{loaded.name}'", "model_not_found",
                           "model")  # fmt: skip
        prompt = inference.prompt_ids(loaded, messages)
        room = loaded.context - len(prompt)
        wanted = req.max_completion_tokens or req.max_tokens
        if room < 1 or (wanted is not None and wanted > room):
            raise ApiError(400, f"this model's context is {loaded.context} tokens; the messages take "
                           f"{len(prompt)}" + (f" and max_tokens asks {wanted} more" if wanted else ""),
                           "context_length_exceeded", "messages")  # fmt: skip
        sample = bool(req.temperature)  # unset or 0: greedy, as reproducible as a test needs
        settings = inference.Settings(
            max_new_tokens=min(wanted or default_max_tokens, room), do_sample=sample,
            temperature=req.temperature or 1.0, top_p=req.top_p or 1.0, top_k=0, seed=req.seed,
        )  # fmt: skip
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not req.stream:
            answer = (await run_in_threadpool(inference.generate, loaded, [messages], settings))[0]
            used = len(loaded.tokenizer(answer, add_special_tokens=False)["input_ids"])
            return {
                "id": rid, "object": "chat.completion", "created": now, "model": loaded.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "length" if used >= settings.max_new_tokens else "stop"}],
                "usage": {"prompt_tokens": len(prompt), "completion_tokens": used,
                          "total_tokens": len(prompt) + used},
            }  # fmt: skip

        def chunk(delta: dict, finish: str | None = None) -> str:
            body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": loaded.name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        def events():
            yield chunk({"role": "assistant", "content": ""})
            text = ""
            for piece in inference.stream(loaded, messages, settings):
                text += piece
                yield chunk({"content": piece})
            used = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
            yield chunk({}, "length" if used >= settings.max_new_tokens else "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


def main(argv: list[str] | None = None) -> int:
    offline.enter()
    parser = argparse.ArgumentParser(prog="python -m runner.train.tools.serve", description=__doc__)
    parser.add_argument("target", help="a run directory or an exported model directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--name", help="the model id clients name [default: the run's or directory's name]")
    parser.add_argument("--max-tokens", type=int, default=512, help="answer length when a request sets none")
    parser.add_argument("--uds", help="listen on this unix socket instead (in a container without network)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    import uvicorn

    from runner.train.tools.inference import load

    try:
        loaded = load(args.target)
    except RunnerError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    if args.name:
        loaded.name = args.name
    api_key = os.environ.get("RUNNER_API_KEY") or None
    app = create_app(loaded, api_key, default_max_tokens=args.max_tokens)
    where = f"unix socket {args.uds}" if args.uds else f"http://{args.host}:{args.port}/v1"
    print(f"serving {loaded.name} on {where} ({'API key required' if api_key else 'no API key'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, uds=args.uds, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
