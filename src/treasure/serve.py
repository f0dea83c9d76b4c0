"""An OpenAI-compatible HTTP server for one bundle: ``treasure serve --model DIR``.

    POST /v1/chat/completions   chat completions, streamed as server-sent events with ``"stream": true``
    GET  /v1/models             the one model served (its name: --model-name, default the bundle folder's name)

Markers travel beside the OpenAI fields (the official client sends them with ``extra_body``):

    client.chat.completions.create(model="tiny", messages=[...],
                                   extra_body={"markers": {"domain": "Code"}, "marker_mode": "fixed"})

``markers`` may also come as ``chat_template_kwargs.markers`` (how vLLM takes them, see docs/serving.md), so one
client call works against both servers. ``marker_mode`` is ``inferred``, ``fixed`` or ``onthefly`` (default: fixed
when markers are given, else inferred). The response carries the block's markers as ``markers`` (with ``fixed`` and
``inferred`` apart, and ``marker_mode``); a stream carries them in its last chunk. The message ``content`` is the
response only, never marker syntax. Marker syntax a user types in a message is text: the chat template sanitises it.
Request messages are checked by treasure/messages.py, as every edge checks them (here with OpenAI's forms: role
``developer``, null content, text parts).

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request (invalid
markers, too many messages, too long content, ``max_tokens`` over the limit), 401 for a missing or wrong key (when
the server has one), 404 for an unknown model or route, 413 for an oversized body.

Generation is CPU/GPU-bound and not async: a request is checked in Starlette's threadpool, then handed to the
batcher (treasure.generate.batcher), whose one worker thread runs requests that arrive together (no more than
``--batch-wait-ms`` apart, or while a batch runs) and share their settings as one batch of up to ``--max-batch-size``;
a stream runs alone in its own thread. The Generator's lock lets one batch or stream run at a time, and the event
loop stays free to accept, reject and stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request  # module level: the routes' annotations are resolved in this namespace

from treasure.errors import RecordError, TaxonomyError, TreasureError
from treasure.generate.batcher import Batcher, BatcherClosed
from treasure.generate.engine import MODES, Generation
from treasure.messages import OPENAI_REQUEST, normalize_messages

if TYPE_CHECKING:
    from treasure.generate.engine import Generator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything over is rejected with a 4xx before any generation."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_content_chars: int = 32_000  # all messages' text together
    max_tokens: int = 1024  # the largest max_tokens a request may ask for
    default_max_tokens: int = 256


class APIError(Exception):
    """A request error, sent back as an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    messages: list[dict[str, str]]
    markers: dict[str, Any] | None
    mode: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stream: bool
    include_usage: bool


# ----------------------------------------------------------------------------------------------- validation


def _number(body: dict, key: str, default: float, lo: float, hi: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise APIError(400, f"{key} must be a number from {lo} to {hi}, got {value!r}", param=key)
    return float(value)


def parse_request(body: Any, model_name: str, limits: Limits) -> ChatRequest:
    """Check a chat-completions body; raise APIError naming the offending parameter."""
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "you must provide a model parameter", param="model")
    if model != model_name:
        raise APIError(404, f"The model `{model}` does not exist (this server has `{model_name}`)",
                       param="model", code="model_not_found")  # fmt: skip
    raw = body.get("messages")
    if isinstance(raw, list) and len(raw) > limits.max_messages:
        raise APIError(400, f"{len(raw)} messages is over the limit of {limits.max_messages}",
                       param="messages", code="too_many_messages")  # fmt: skip
    try:
        messages = normalize_messages(raw, rules=OPENAI_REQUEST)
    except RecordError as e:  # the one message error text, answered as OpenAI does: 400 naming the field
        raise APIError(400, f"{e.field}: {e.message}", param=e.field) from None
    chars = sum(len(m["content"]) for m in messages)
    if chars > limits.max_content_chars:
        raise APIError(400, f"the messages hold {chars:,} characters, over the limit of {limits.max_content_chars:,}",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    n = body.get("n")
    if n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(key)
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, limits.max_tokens)
    elif isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise APIError(400, f"{key} must be a positive integer, got {max_tokens!r}", param=key)
    elif max_tokens > limits.max_tokens:
        raise APIError(400, f"{key} {max_tokens} is over this server's limit of {limits.max_tokens}",
                       param=key, code="max_tokens_exceeded")  # fmt: skip
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise APIError(400, f"seed must be an integer, got {seed!r}", param="seed")
    markers = body.get("markers")
    kwargs = body.get("chat_template_kwargs")
    if markers is None and isinstance(kwargs, dict):
        markers = kwargs.get("markers")
    if markers is not None and not isinstance(markers, dict):
        raise APIError(400, "markers must be an object of category to value", param="markers",
                       code="invalid_marker")  # fmt: skip
    mode = body.get("marker_mode") or ("fixed" if markers else "inferred")
    if mode not in MODES:
        raise APIError(400, f"unknown marker_mode {mode!r} (valid: {', '.join(MODES)})", param="marker_mode")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise APIError(400, "stream must be a boolean", param="stream")
    options = body.get("stream_options") or {}
    return ChatRequest(
        messages=messages,
        markers=markers or None,
        mode=mode,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0) or 1.0,
        seed=seed,
        stream=stream,
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )


# --------------------------------------------------------------------------------------------------- the app


def _marker_fields(gen: Generation) -> dict[str, Any]:
    return {"markers": gen.markers, "fixed": gen.fixed, "inferred": gen.inferred, "marker_mode": gen.mode}


def _usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
    }


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(
    generator: Generator,
    *,
    model_name: str,
    api_key: str | None = None,
    limits: Limits | None = None,
    max_batch_size: int = 16,
    batch_wait_ms: float = 10.0,
) -> FastAPI:
    """The FastAPI app serving `generator` as `model_name`; with `api_key` every /v1 route needs its Bearer key.
    Requests that arrive within `batch_wait_ms` of each other run as one batch of up to `max_batch_size`."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits = limits or Limits()
    created = int(time.time())
    max_positions = getattr(generator.model.config, "max_position_embeddings", None) or 10**9
    batcher = Batcher(generator, max_batch_size=max_batch_size, wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def _lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="treasure", docs_url=None, redoc_url=None, openapi_url=None, lifespan=_lifespan)
    app.state.generator = generator
    app.state.batcher = batcher

    def _error(err: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
        return JSONResponse(err.body(), status_code=err.status, headers=headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error(APIError(err.status_code, str(err.detail), type=kind))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(APIError(400, str(err.errors()[:1])))

    @app.exception_handler(BatcherClosed)
    async def _closing(request: Request, err: BatcherClosed) -> JSONResponse:
        return _error(APIError(503, str(err), type="server_error"))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")
        return _error(APIError(500, f"internal error: {type(err).__name__}", type="server_error"))

    def _authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(
                401, "Incorrect API key provided", type="invalid_request_error", code="invalid_api_key"
            )

    async def _read_body(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            raise APIError(413, f"request body of {int(length):,} bytes is over the limit of "
                                f"{limits.max_body_bytes:,}", code="request_too_large")  # fmt: skip
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_body_bytes:
                raise APIError(413, f"request body is over the limit of {limits.max_body_bytes:,} bytes",
                               code="request_too_large")  # fmt: skip
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None

    def _check(req: ChatRequest) -> None:
        """Markers and context length, checked before streaming starts (runs in the threadpool)."""
        try:
            prompt, _ = generator.plan(req.messages, req.markers, req.mode)
        except TaxonomyError as e:
            raise APIError(400, str(e), param="markers", code="invalid_marker") from None
        except TreasureError as e:
            raise APIError(400, str(e), param="markers") from None
        with generator._tok_lock:
            n_prompt = len(generator.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt + req.max_tokens > max_positions:
            raise APIError(400, f"the prompt ({n_prompt} tokens) plus max_tokens ({req.max_tokens}) is over the "
                                f"model's context of {max_positions} tokens", param="messages",
                           code="context_length_exceeded")  # fmt: skip

    def _gen_kwargs(req: ChatRequest) -> dict[str, Any]:
        return {
            "mode": req.mode,
            "max_new_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "seed": req.seed,
        }

    def _complete(req: ChatRequest) -> Future[Generation]:
        _check(req)
        return batcher.submit(req.messages, req.markers, **_gen_kwargs(req))

    def _events(req: ChatRequest, cid: str) -> Iterator[str]:
        head = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model_name,
        }

        def chunk(delta: dict, finish: str | None = None, **extra: Any) -> str:
            return _sse({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})

        try:
            yield chunk({"role": "assistant", "content": ""})
            for piece in generator.stream(req.messages, req.markers, **_gen_kwargs(req)):
                if isinstance(piece, Generation):
                    yield chunk({}, piece.finish_reason, **_marker_fields(piece))
                    if req.include_usage:
                        yield _sse({**head, "choices": [], "usage": _usage(piece)})
                elif piece:
                    yield chunk({"content": piece})
        except Exception as e:  # headers are gone: report in the stream, as OpenAI does
            log.exception("error while streaming")
            yield _sse(APIError(500, f"internal error: {type(e).__name__}", type="server_error").body())
        yield "data: [DONE]\n\n"

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        _authorize(request)
        bundle = generator.bundle
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "treasure",
                    "marker_categories": list(generator.taxonomy.names) if generator.uses_markers else [],
                    "marker_format": bundle.markers.format if generator.uses_markers else None,
                }
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        _authorize(request)
        req = parse_request(await _read_body(request), model_name, limits)
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        if req.stream:
            await run_in_threadpool(_check, req)
            headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
            return StreamingResponse(_events(req, cid), media_type="text/event-stream", headers=headers)
        gen = await asyncio.wrap_future(await run_in_threadpool(_complete, req))
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": gen.text},
                    "finish_reason": gen.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(gen),
            **_marker_fields(gen),
            "block_closed": gen.block_closed,
            "cut": gen.cut,
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def serve(
    model: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    limits: Limits | None = None,
    log_level: str = "info",
    max_batch_size: int = 16,
    batch_wait_ms: float = 10.0,
) -> None:
    """Load the bundle (or plain model: no markers) at `model` and serve it until interrupted."""
    import uvicorn

    from treasure.bundle import load_any
    from treasure.generate.engine import Generator

    generator = Generator(load_any(model))
    info = generator.bundle.info
    name = model_name or (
        info["base_model"] if info.get("plain_model") else generator.bundle.path.resolve().name
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning("serving on %s without an API key: anyone who can reach the port can use the model", host)
    app = create_app(generator, model_name=name, api_key=api_key, limits=limits, max_batch_size=max_batch_size,
                     batch_wait_ms=batch_wait_ms)  # fmt: skip
    print(f"serving {generator.bundle.path} as {name!r} on http://{host}:{port}/v1", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=30)
