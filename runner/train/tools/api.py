"""What runner's HTTP servers share (the chat server, runner/train/tools/serve.py, and a
classifier's, serve_classify.py): OpenAI's error body, the limits a server takes on, and the
bearer-token check."""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

MAX_BODY = 1 << 20  # bytes of one request
DRAIN_LIMIT = 64 << 20  # bytes read of a request over MAX_BODY before the connection is dropped


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    """How much the server takes on."""

    max_batch: int = 16  # requests generated together (the engine's bound)
    max_queue: int = 64  # requests waiting beyond those; more get a 429
    timeout: float = 600.0  # seconds one request may take, waiting included
    default_max_tokens: int = 512  # answer length when a request sets none
    max_body: int = MAX_BODY


class BearerAuth:
    """`Authorization: Bearer KEY` on every request (plain ASGI: no wrapping of the responses, so
    a client's disconnect reaches the endpoint as it is)."""

    def __init__(self, app, key: str) -> None:
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            token = given[7:] if given.lower().startswith(b"bearer ") else b""
            if not hmac.compare_digest(token, self.key):
                error = ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                 "invalid_api_key", kind="authentication_error")  # fmt: skip
                await JSONResponse(error.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def answer_errors_as_openai(app: FastAPI, api_key: str | None) -> None:
    """Every error as OpenAI's error body (ours, routing's, validation's, a crash's), and the
    bearer-token check when the server has a key."""
    log = logging.getLogger("runner.train.tools.serve")

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return JSONResponse(ApiError(e.status_code, str(e.detail), code).body(), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return JSONResponse(ApiError(400, str(e), "invalid_request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        log.exception("request failed")
        body = ApiError(
            500, f"internal error: {type(e).__name__}: {e}", "internal_error", kind="server_error"
        )
        return JSONResponse(body.body(), status_code=500)

    if api_key is not None:
        app.add_middleware(BearerAuth, key=api_key)


def list_the_model(app: FastAPI, name: str, card) -> None:
    """GET /v1/models and /v1/models/{name}: the one model this server serves, as card() describes it."""

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card()]}

    @app.get("/v1/models/{wanted:path}")
    async def model(wanted: str):
        if wanted != name:
            raise ApiError(
                404, f"no model '{wanted}'; this server serves '{name}'", "model_not_found", "model"
            )
        return card()


async def read_request(request: Request, limits: Limits, model: type[BaseModel]) -> tuple[BaseModel, object]:
    """The request's JSON body validated as `model`, and the body itself. Read to the end (a client
    still sending would see a broken connection instead of the answer), keeping at most max_body
    bytes; given up on past DRAIN_LIMIT."""
    kept, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size <= limits.max_body:
            kept.append(part)
        elif size > DRAIN_LIMIT:
            break
    if size > limits.max_body:
        raise ApiError(413, f"request body over {limits.max_body} bytes", "request_too_large")
    try:
        body = json.loads(b"".join(kept))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None
    try:
        return model.model_validate(body), body
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApiError(400, f"{where}: {first['msg']}", "invalid_request", where or None) from None
