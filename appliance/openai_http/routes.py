"""The OpenAI API's routes over the InferenceCore: the same keys, admission, redaction, engines and
metering as the gRPC service, answered in the OpenAI API's shapes and statuses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from pathlib import Path

import grpc
from aiohttp import web
from tokenizers import Tokenizer

from appliance.errors import InvalidRequest
from appliance.openai_http import replies, schemas
from appliance.registry import load_tokenizer
from appliance.server.core import InferenceCore
from appliance.server.errors import CallInfo, HttpError, RequestTooLarge, describe, http_error_for

# Where a handler keeps its server-sent-events response once the 200 has gone out: an error after
# that can only be told as an error event on the stream.
OPEN_STREAM = web.RequestKey("open_stream", web.StreamResponse)
_DONE = b"data: [DONE]\n\n"


def _dumps(body: dict) -> str:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _event(body: dict) -> bytes:
    return f"data: {_dumps(body)}\n\n".encode()


def error_response(error: HttpError) -> web.Response:
    headers = {"Retry-After": "1"} if error.status in (429, 503) else None
    return web.json_response(replies.error_body(error), status=error.status, headers=headers, dumps=_dumps)


@functools.lru_cache(maxsize=16)
def _tokenizer(package: Path, version: str) -> Tokenizer:
    """A package's tokenizer, for logprobs' token texts (gRPC sends ids); one per version, so a
    hot reload's new tokenizer is read anew."""
    return load_tokenizer(package)


def _authorization(request: web.Request) -> str:
    return request.headers.get("Authorization", "")


def _metered(rpc: str):
    """Meters a handler's end in the core, as gRPC's MeteredCall does, and answers
    an exception with the OpenAI error body and the status mapped from the exception hierarchy."""

    def wrap(handler):
        @functools.wraps(handler)
        async def endpoint(self: "OpenAIRoutes", request: web.Request) -> web.StreamResponse:
            call = CallInfo(rpc, api="openai")
            try:
                response = await handler(self, request, call)
            except (asyncio.CancelledError, ConnectionResetError):
                # The client went away: aiohttp cancels the handler (or a write fails).
                self.core.finished(call, grpc.StatusCode.CANCELLED)
                raise
            except Exception as exc:
                code, _ = describe(rpc, exc)
                self.core.finished(call, code)
                return await _refuse(request, http_error_for(exc))
            self.core.finished(call, grpc.StatusCode.OK)
            return response

        return endpoint

    return wrap


async def _refuse(request: web.Request, error: HttpError) -> web.StreamResponse:
    stream = request.get(OPEN_STREAM)
    if stream is None:
        return error_response(error)
    with contextlib.suppress(ConnectionResetError):
        await stream.write(_event(replies.error_body(error)))
        await stream.write_eof()
    return stream


class OpenAIRoutes:
    def __init__(self, core: InferenceCore, max_body_bytes: int):
        self.core = core
        self.max_body_bytes = max_body_bytes

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{name}", self.model)
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/embeddings", self.embeddings)

    async def _body(self, request: web.Request, kind: type[schemas.Body]) -> schemas.Body:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise RequestTooLarge(f"body: larger than the limit of {self.max_body_bytes} bytes") from None
        return schemas.parse(kind, raw)

    @_metered("models")
    async def models(self, request: web.Request, call: CallInfo) -> web.Response:
        key = self.core.caller(_authorization(request), call, admitting=False)
        return web.json_response(replies.model_list(self.core.visible_models(key)), dumps=_dumps)

    @_metered("models.get")
    async def model(self, request: web.Request, call: CallInfo) -> web.Response:
        key = self.core.caller(_authorization(request), call, admitting=False)
        name = request.match_info["name"]
        self.core.auth.check_model(key, name)
        return web.json_response(replies.model_card(self.core.registry.lookup(name)), dumps=_dumps)

    @_metered("chat.completions")
    async def chat_completions(self, request: web.Request, call: CallInfo) -> web.StreamResponse:
        key = self.core.caller(_authorization(request), call)
        return await self._generate(request, call, key, await self._body(request, schemas.ChatRequest), True)

    @_metered("completions")
    async def completions(self, request: web.Request, call: CallInfo) -> web.StreamResponse:
        key = self.core.caller(_authorization(request), call)
        return await self._generate(request, call, key, await self._body(request, schemas.CompletionRequest), False)

    async def _generate(self, request: web.Request, call: CallInfo, key, body, chat: bool) -> web.StreamResponse:
        reply = replies.Reply(chat)

        def parse(model):
            text_request = body.text_request(self.core.default_max_tokens)
            reply.model = model.name
            if text_request.params.logprobs is not None:
                reply.tokenizer = _tokenizer(model.path, model.version)
            return text_request

        async with contextlib.aclosing(self.core.generate(call, key, body.model, parse)) as pieces:
            if not body.stream:
                return web.json_response(reply.whole([piece async for piece in pieces]), dumps=_dumps)
            # The first piece comes after admission and prefill, so a refusal still gets its status.
            piece = await anext(pieces)
            stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await stream.prepare(request)
            request[OPEN_STREAM] = stream
            first = True
            while True:
                # Pieces with no text (held back by redaction or an unfinished character) send nothing.
                if piece.text or piece.event.finish_reason is not None or (piece.event.logprobs and
                                                                           not piece.hides_tokens):
                    await stream.write(_event(reply.chunk(piece, first)))
                    first = False
                if piece.event.finish_reason is not None:
                    break
                piece = await anext(pieces)
            if body.include_usage:
                await stream.write(_event(reply.usage_chunk(piece)))
            await stream.write(_DONE)
            await stream.write_eof()
            return stream

    @_metered("embeddings")
    async def embeddings(self, request: web.Request, call: CallInfo) -> web.Response:
        key = self.core.caller(_authorization(request), call)
        body = await self._body(request, schemas.EmbeddingRequest)
        try:
            vectors = await self.core.embed(call, key, body.model, lambda: body.texts, normalize=True)
        except InvalidRequest as exc:
            if not exc.field.startswith("texts"):
                raise
            raise InvalidRequest("input" + exc.field.removeprefix("texts"), exc.reason) from None
        return web.json_response(replies.embeddings(vectors, call.model, call.prompt_tokens, body.encoding_format),
                                 dumps=_dumps)
