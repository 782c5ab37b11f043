"""The appliance.v1.Inference service: the gRPC door to the InferenceCore (appliance/server/core.py)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

import grpc

from appliance.engine.classifier import zero_shot
from appliance.errors import InvalidRequest
from appliance.server import convert
from appliance.server.core import InferenceCore, TextRequest, classifies, encode, labels_itself
from appliance.server.errors import CallInfo, MeteredCall
from appliance.server.request_limits import require_model
from appliance.v1 import inference_pb2_grpc


def _deadline_ns(context: grpc.aio.ServicerContext) -> int:
    """The call's deadline on the monotonic clock, so the engine frees the row when it passes."""
    remaining = context.time_remaining()
    return time.monotonic_ns() + int(remaining * 1e9) if remaining is not None else 0


def _authorization(context: grpc.aio.ServicerContext) -> str:
    return dict(context.invocation_metadata() or ()).get("authorization", "")


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, core: InferenceCore):
        self.core = core

    def _metered(self, rpc: str, context: grpc.aio.ServicerContext) -> MeteredCall:
        return MeteredCall(rpc, context, self.core.finished)

    def _caller(self, context: grpc.aio.ServicerContext, call: CallInfo, admitting: bool = True):
        return self.core.caller(_authorization(context), call, admitting)

    async def Generate(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("Generate", context) as call:
            key = self._caller(context, call)

            def parse(model) -> TextRequest:
                messages = convert.chat_messages(request)
                params = convert.generate_params(request, self.core.default_max_tokens)
                return TextRequest(request.prompt, messages, params, *convert.redaction_policies(request),
                                   deadline_ns=_deadline_ns(context))

            async with contextlib.aclosing(self.core.generate(call, key, request.model, parse)) as pieces:
                async for piece in pieces:
                    yield convert.generate_response(piece.event, piece.text, piece.hides_tokens, piece.redacted,
                                                    piece.model_version)

    async def Embed(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("Embed", context) as call:
            key = self._caller(context, call)
            vectors = await self.core.embed(call, key, request.model, lambda: request.texts,
                                            request.normalize, _deadline_ns(context))
            return convert.embed_response(vectors, call.prompt_tokens)

    async def Classify(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("Classify", context) as call:
            key = self._caller(context, call)
            core = self.core
            with core.served(call, key, request.model, classifies,
                             "text-classification, or feature-extraction with labels") as model:
                texts, labels, top_k = convert.classify_request(request)  # the model's task answers first
                if labels_itself(model):
                    if labels:
                        raise InvalidRequest("labels", f"model {model.name!r} has its own labels; send none")
                    work = functools.partial(model.classifier.classify, texts)
                else:
                    work = functools.partial(zero_shot, model.embedder, texts, labels)
                lease = core.auth.admit(key)
                try:
                    ranked, call.prompt_tokens = await encode(work, _deadline_ns(context))
                finally:
                    lease.release(call.prompt_tokens)
            return convert.classify_response(ranked, top_k, call.prompt_tokens)

    async def GetModel(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("GetModel", context) as call:
            key = self._caller(context, call, admitting=False)
            self.core.auth.check_model(key, require_model(request.name))
            return convert.get_model_response(self.core.registry.lookup(request.name))

    async def Redact(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("Redact", context) as call:
            self._caller(context, call)
            text, operator = convert.redact_request(request)
            redaction = self.core.redaction
            result = await asyncio.to_thread(redaction.redactor.redact, text, operator=operator)
            for entity in result.entities:
                self.core.metrics.pii.labels(entity.type, "redact").inc()
            return convert.redact_response(result)

    async def ListModels(self, request, context: grpc.aio.ServicerContext):
        async with self._metered("ListModels", context) as call:
            key = self._caller(context, call, admitting=False)
            return convert.list_models_response(self.core.visible_models(key))
