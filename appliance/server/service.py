"""The appliance.v1.Inference service: checks the model and task, then hands over to the engine."""

from __future__ import annotations

import asyncio
import logging

import grpc

from appliance.errors import Draining, WrongTask
from appliance.registry import ModelRegistry
from appliance.server import convert
from appliance.server.errors import stream_errors, unary_errors
from appliance.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, registry: ModelRegistry, default_max_tokens: int):
        self.registry = registry
        self.default_max_tokens = default_max_tokens
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
        params = convert.generate_params(request, self.default_max_tokens)
        engine = model.engine
        prompt_ids = await asyncio.to_thread(engine.tokenize, request.prompt)
        self.active_streams += 1
        try:
            async for event in engine.generate(prompt_ids, params):
                yield convert.generate_response(event)
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
    async def ListModels(self, request, context):
        return convert.list_models_response(self.registry.entries())
