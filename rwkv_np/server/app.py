"""The ASGI app (Starlette): the OpenAI routes, server-sent events, client disconnects.

    POST /v1/completions        {"model", "prompt", "max_tokens", "temperature", "top_p", "stop",
    POST /v1/chat/completions    "seed", "presence_penalty", "frequency_penalty", "n": 1, "stream"}
    GET  /v1/models, /v1/models/{id}
    GET  /health                 engine and cache counters; 503 when the engine thread is gone

A request's body is checked (protocol.py) on the event loop, then handed to the engine thread
(engine.py), which sends its events back through `loop.call_soon_threadsafe` into an asyncio
queue. With "stream": true every text piece is one server-sent event (`data: {chunk}`), closed by
`data: [DONE]`; without, the text is collected and sent at the end. Either way, a client that
goes away cancels its request: the engine drops it before its next step.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from . import protocol
from .engine import Engine
from .protocol import ApiError
from .request import Request


@dataclass
class Limits:
    max_prompt_tokens: int = 16384
    max_body_bytes: int = 8 << 20
    chat_max_tokens: int = 256        # a chat request's max_tokens when it gives none
    completion_max_tokens: int = 16   # a completion's (OpenAI's default)


class _CancelOnExit(StreamingResponse):
    """A stream that cancels its engine request however it ends: finished, client gone (Starlette
    cancels the sending task), or the server's shutdown timeout."""

    def __init__(self, request: Request, content, **kwargs):
        super().__init__(content, **kwargs)
        self.engine_request = request

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.engine_request.cancelled = True


def _sse(body) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, tokenizer, model_id: str, limits: Limits | None = None) -> Starlette:
    limits = limits or Limits()
    created = int(time.time())
    vocab_size = engine.model.config.vocab_size

    async def read_body(http: HttpRequest) -> dict:
        length = http.headers.get("content-length", "")
        if length.isdigit() and int(length) > limits.max_body_bytes:
            raise ApiError(413, f"the request body has {length} bytes, more than this server's limit of "
                                f"{limits.max_body_bytes}")
        raw = bytearray()
        async for chunk in http.stream():
            raw += chunk
            if len(raw) > limits.max_body_bytes:
                raise ApiError(413, f"the request body is over this server's limit of {limits.max_body_bytes} bytes")
        return protocol.parse_json(bytes(raw))

    async def complete(http: HttpRequest, chat: bool):
        p = protocol.parse_request(await read_body(http), chat, tokenizer, model_id, vocab_size,
                                   limits.chat_max_tokens if chat else limits.completion_max_tokens,
                                   limits.max_prompt_tokens)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event):  # called from the engine thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, event)

        request = Request(p.ids, p.sampling, emit, tokenizer, vocab_size, engine.eos_ids, p.checkpoints,
                          strip_leading_spaces=chat)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        engine.submit(request)
        if p.stream:
            return _CancelOnExit(request, _stream(events, chat, rid, p.include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        try:
            return await _collect(http, events, chat, rid)
        finally:
            request.cancelled = True  # finished requests are gone already; a dropped client's stops

    async def next_event(events, wait: float = 0.5):
        """The engine's next event for a request, None after `wait` seconds without one, or an
        error event when the engine thread has died (so that no response waits forever)."""
        try:
            return await asyncio.wait_for(events.get(), timeout=wait)
        except asyncio.TimeoutError:  # noqa: UP041 (not the builtin before Python 3.11)
            return None if engine.alive else ("error", "the engine has stopped")

    async def _stream(events, chat, rid, include_usage):
        chunk = lambda **kw: protocol.chunk_body(chat, rid, created, model_id, **kw)
        if chat:
            yield _sse(chunk(role=True))
        while True:
            event = await next_event(events)
            if event is None:
                continue
            if event[0] == "text":
                yield _sse(chunk(text=event[1]))
                continue
            if event[0] == "done":
                yield _sse(chunk(finish=event[1]))
                if include_usage:
                    yield _sse(chunk(usage=event[2]))
            else:
                yield _sse(protocol.error_body(500, event[1]))
            yield "data: [DONE]\n\n"
            return

    async def _collect(http, events, chat, rid):
        pieces, checked = [], time.monotonic()
        while True:
            event = await next_event(events)
            if time.monotonic() - checked >= 0.5:  # the client may have gone while tokens kept coming
                if await http.is_disconnected():
                    return JSONResponse(protocol.error_body(400, "client disconnected"), status_code=400)
                checked = time.monotonic()
            if event is None:
                continue
            if event[0] == "text":
                pieces.append(event[1])
            elif event[0] == "done":
                return JSONResponse(protocol.response_body(chat, rid, created, model_id, "".join(pieces),
                                                           event[1], event[2]))
            else:
                raise ApiError(500 if engine.alive else 503, event[1])

    async def completions(http):
        return await complete(http, chat=False)

    async def chat_completions(http):
        return await complete(http, chat=True)

    def card() -> dict:
        return {"id": model_id, "object": "model", "created": created, "owned_by": "rwkv_np"}

    async def models(http):
        return JSONResponse({"object": "list", "data": [card()]})

    async def model(http):
        name = http.path_params["model"]
        if name != model_id:
            raise ApiError(404, f"model {name!r} does not exist; this server serves {model_id!r}", "model",
                           "model_not_found")
        return JSONResponse(card())

    async def health(http):
        alive = engine.alive
        return JSONResponse({"status": "ok" if alive else "engine stopped", "model": model_id, **engine.stats()},
                            status_code=200 if alive else 503)

    async def api_error(http, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status)

    async def http_error(http, e: HTTPException):
        return JSONResponse(protocol.error_body(e.status_code, f"{http.method} {http.url.path}: {e.detail}"),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    async def server_error(http, e: Exception):
        return JSONResponse(protocol.error_body(500, f"internal error: {type(e).__name__}: {e}"), status_code=500)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        yield
        engine.stop()

    routes = [Route("/v1/completions", completions, methods=["POST"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/models", models), Route("/v1/models/{model:path}", model),
              Route("/health", health)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={ApiError: api_error, HTTPException: http_error,
                                         Exception: server_error})
