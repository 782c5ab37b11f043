"""The appliance.v1.Inference service: checks the model and task, then hands over to the engine."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc

from appliance.engine.chat import ChatMessage
from appliance.errors import Draining, InvalidRequest, WrongTask
from appliance.registry import ModelRegistry
from appliance.server import convert
from appliance.server.errors import stream_errors, unary_errors
from appliance.server.redaction import RedactionStage
from appliance.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)


def _deadline_ns(context: grpc.aio.ServicerContext) -> int:
    """The call's deadline on the monotonic clock, so the engine frees the row when it passes."""
    remaining = context.time_remaining()
    return time.monotonic_ns() + int(remaining * 1e9) if remaining is not None else 0


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, registry: ModelRegistry, default_max_tokens: int, redaction: RedactionStage):
        self.registry = registry
        self.default_max_tokens = default_max_tokens
        self.redaction = redaction
        self.draining = False
        self.active_streams = 0

    def _check_admitting(self) -> None:
        if self.draining:
            raise Draining("the server is draining; retry on another appliance")

    @stream_errors
    async def Generate(self, request, context: grpc.aio.ServicerContext):
        self._check_admitting()
        model = self.registry.get(convert.require_model(request.model))
        if model.engine is None:
            raise WrongTask(f"model {model.name!r} is a {model.manifest.task} model; Generate needs text-generation")
        messages = convert.chat_messages(request)
        params = convert.generate_params(request, self.default_max_tokens)
        if messages is not None and model.chat is None:
            raise InvalidRequest("messages", f"model {model.name!r} has no chat template; send a prompt")
        redaction = self.redaction.for_request(*convert.redaction_policies(request))
        # Where PII is caught on the way in: each message (or the prompt) before templating, so
        # the template's own markup is never mistaken for data.
        if messages is not None:
            prompt = model.chat.render([ChatMessage(m.role, redaction.prompt(m.content)) for m in messages])
        else:
            prompt = redaction.prompt(request.prompt)
        engine = model.engine
        prompt_ids = await asyncio.to_thread(engine.tokenize, prompt)
        request_id = uuid.uuid4().hex
        self.active_streams += 1
        try:
            async for event in engine.generate(prompt_ids, params, _deadline_ns(context)):
                # ... and on the way out: every streamed delta passes the output stage.
                text = redaction.output(event.text)
                if event.finish_reason is None:
                    yield convert.generate_response(event, text, redaction.hides_tokens)
                    continue
                text += redaction.finish()
                self.redaction.audit(request_id, redaction)
                yield convert.generate_response(event, text, redaction.hides_tokens, redaction.counts())
        finally:
            self.active_streams -= 1

    @unary_errors
    async def Embed(self, request, context):
        self._check_admitting()
        model = self.registry.get(convert.require_model(request.model))
        if model.embedder is None:
            raise WrongTask(f"model {model.name!r} is a {model.manifest.task} model; Embed needs feature-extraction")
        vectors, tokens = await asyncio.to_thread(model.embedder.embed, convert.embed_texts(request), request.normalize)
        return convert.embed_response(vectors, tokens)

    @unary_errors
    async def Redact(self, request, context):
        self._check_admitting()
        text, operator = convert.redact_request(request)
        result = await asyncio.to_thread(self.redaction.redactor.redact, text, operator=operator)
        return convert.redact_response(result)

    @unary_errors
    async def ListModels(self, request, context):
        return convert.list_models_response(self.registry.entries())
