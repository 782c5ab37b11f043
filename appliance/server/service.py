"""The appliance.v1.Inference service: checks the model and task, then hands over to the engine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from typing import Optional

import grpc

from appliance.engine.chat import ChatMessage
from appliance.engine.classifier import zero_shot
from appliance.errors import Draining, InvalidRequest, WrongTask
from appliance.registry import ModelRegistry
from appliance.server import convert
from appliance.server.auth import Authenticator
from appliance.server.errors import CallInfo, stream_errors, unary_errors
from appliance.server.metrics import Metrics
from appliance.server.redaction import RedactionStage
from appliance.server.usage import UsageEvent, UsageLog
from appliance.v1 import inference_pb2_grpc

log = logging.getLogger(__name__)
access_log = logging.getLogger("appliance.access")


def _deadline_ns(context: grpc.aio.ServicerContext) -> int:
    """The call's deadline on the monotonic clock, so the engine frees the row when it passes."""
    remaining = context.time_remaining()
    return time.monotonic_ns() + int(remaining * 1e9) if remaining is not None else 0


async def _encode(work, context: grpc.aio.ServicerContext):
    """Runs `work(stop=...)` (encoder sub-batches) in a worker thread. A client that goes away or a
    deadline that passes cancels this task; `stop()` then tells the worker to end before its next
    sub-batch, and the caller's model hold and lease last until it has."""
    deadline_ns = _deadline_ns(context)
    cancelled = threading.Event()

    def stop() -> bool:
        return cancelled.is_set() or 0 < deadline_ns <= time.monotonic_ns()

    worker = asyncio.ensure_future(asyncio.to_thread(work, stop=stop))
    try:
        return await asyncio.shield(worker)
    except asyncio.CancelledError:
        cancelled.set()
        with contextlib.suppress(Exception):
            await worker
        raise


class InferenceService(inference_pb2_grpc.InferenceServicer):
    def __init__(self, registry: ModelRegistry, default_max_tokens: int, redaction: RedactionStage,
                 auth: Authenticator, metrics: Metrics, usage: Optional[UsageLog] = None):
        self.registry = registry
        self.default_max_tokens = default_max_tokens
        self.redaction = redaction
        self.auth = auth
        self.metrics = metrics
        self.usage = usage
        self.draining = False
        self.active_streams = 0

    def _caller(self, context: grpc.aio.ServicerContext, call: CallInfo, admitting: bool = True):
        """The caller's key (UNAUTHENTICATED without a valid one); refuses new work while draining."""
        key = self.auth.identify(context)
        call.key_id = key.id
        if admitting and self.draining:
            raise Draining("the server is draining; retry on another appliance")
        return key

    @contextlib.contextmanager
    def _served(self, call: CallInfo, key, name: str, task_attr: str, needs: str):
        """The ready model `name` for this key, with the component the RPC needs, held (a hot
        reload cannot close it) until the block ends."""
        self.auth.check_model(key, convert.require_model(name))
        with self.registry.hold(name) as model:
            call.model = model.name
            if getattr(model, task_attr) is None:
                raise WrongTask(f"model {model.name!r} is a {model.manifest.task} model; this call needs {needs}")
            yield model

    def finished(self, call: CallInfo, status: grpc.StatusCode) -> None:
        """Meters every call's end: an access log line, metrics by status, usage per key, model, day."""
        access_log.info("rpc finished", extra={"fields": {
            "request_id": call.request_id, "rpc": call.rpc, "model": call.model, "key_id": call.key_id,
            "status": status.name, "prompt_tokens": call.prompt_tokens, "completion_tokens": call.completion_tokens}})
        self.metrics.requests.labels(call.rpc, call.model or "-", status.name).inc()
        if self.usage is not None and call.key_id and call.model:
            self.usage.record(UsageEvent(call.key_id, call.model, call.prompt_tokens, call.completion_tokens,
                                         cancelled=status is grpc.StatusCode.CANCELLED,
                                         rejected=status not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)))

    @stream_errors
    async def Generate(self, request, context: grpc.aio.ServicerContext, call: CallInfo):
        key = self._caller(context, call)
        with self._served(call, key, request.model, "engine", "text-generation") as model:
            # Closed here, not by the garbage collector, so the row is freed before the hold ends.
            async with contextlib.aclosing(self._generate(request, context, call, key, model)) as stream:
                async for message in stream:
                    yield message

    async def _generate(self, request, context: grpc.aio.ServicerContext, call: CallInfo, key, model):
        messages = convert.chat_messages(request)
        params = convert.generate_params(request, self.default_max_tokens)
        if messages is not None and model.chat is None:
            raise InvalidRequest("messages", f"model {model.name!r} has no chat template; send a prompt")
        redaction = self.redaction.for_request(*convert.redaction_policies(request), key.rights)
        engine = model.engine

        def prepare() -> list[int]:
            # Where PII is caught on the way in: each message (or the prompt) before templating, so
            # the template's own markup is never mistaken for data. Off the event loop: a long
            # prompt takes milliseconds to scan and tokenize.
            if messages is not None:
                prompt = model.chat.render([ChatMessage(m.role, redaction.prompt(m.content)) for m in messages])
            else:
                prompt = redaction.prompt(request.prompt)
            return engine.tokenize(prompt)

        # The key's limits and a full engine refuse at once, before the prompt is scanned and
        # tokenized, as in Embed and Classify. The token quota needs no count yet: admit asks only
        # whether credit is left, and the tokens used are charged when the lease is released.
        lease = self.auth.admit(key)
        try:
            engine.check_room()
            prompt_ids = await asyncio.to_thread(prepare)
            call.prompt_tokens = len(prompt_ids)
            self.active_streams += 1
            try:
                async for event in engine.generate(prompt_ids, params, _deadline_ns(context)):
                    call.completion_tokens += len(event.token_ids)
                    # ... and on the way out: every streamed delta passes the output stage.
                    text = redaction.output(event.text)
                    if event.finish_reason is None:
                        yield convert.generate_response(event, text, redaction.hides_tokens)
                        continue
                    call.completion_tokens = event.completion_tokens
                    text += redaction.finish()
                    redacted = self.redaction.audit(call.request_id, redaction)
                    self._observe_generation(model.name, event, redacted)
                    yield convert.generate_response(event, text, redaction.hides_tokens, redacted, model.version)
            finally:
                self.active_streams -= 1
                self.metrics.observe_engine(model.name, engine.stats())
        finally:
            lease.release(call.prompt_tokens + call.completion_tokens)

    def _observe_generation(self, model: str, event, redacted: dict[tuple[str, str], int]) -> None:
        timings, metrics = event.timings, self.metrics
        metrics.tokens.labels(model, "prompt").inc(event.prompt_tokens)
        metrics.tokens.labels(model, "completion").inc(event.completion_tokens)
        if timings is not None:
            metrics.queue_time.labels(model).observe(timings.queue_ns / 1e9)
            if timings.first_token_ns:
                metrics.time_to_first_token.labels(model).observe(timings.time_to_first_token_ns / 1e9)
            if event.completion_tokens > 1:
                metrics.inter_token.labels(model).observe(timings.decode_ns / 1e9 / (event.completion_tokens - 1))
        for (direction, entity_type), count in redacted.items():
            metrics.pii.labels(entity_type, direction).inc(count)

    @unary_errors
    async def Embed(self, request, context, call: CallInfo):
        key = self._caller(context, call)
        with self._served(call, key, request.model, "embedder", "feature-extraction") as model:
            lease = self.auth.admit(key)
            try:
                work = functools.partial(model.embedder.embed, convert.embed_texts(request), request.normalize)
                vectors, call.prompt_tokens = await _encode(work, context)
            finally:
                lease.release(call.prompt_tokens)
        self.metrics.tokens.labels(model.name, "prompt").inc(call.prompt_tokens)
        return convert.embed_response(vectors, call.prompt_tokens)

    @unary_errors
    async def Classify(self, request, context, call: CallInfo):
        key = self._caller(context, call)
        self.auth.check_model(key, convert.require_model(request.model))
        with self.registry.hold(request.model) as model:
            call.model = model.name
            own_labels = model.classifier is not None and not model.classifier.per_token
            if not own_labels and model.embedder is None:
                raise WrongTask(f"model {model.name!r} is a {model.manifest.task} model; Classify needs "
                                "text-classification, or feature-extraction with labels")
            texts, labels, top_k = convert.classify_request(request)  # the model's task answers first
            if own_labels:
                if labels:
                    raise InvalidRequest("labels", f"model {model.name!r} has its own labels; send none")
                work = functools.partial(model.classifier.classify, texts)
            else:
                work = functools.partial(zero_shot, model.embedder, texts, labels)
            lease = self.auth.admit(key)
            try:
                ranked, call.prompt_tokens = await _encode(work, context)
            finally:
                lease.release(call.prompt_tokens)
        return convert.classify_response(ranked, top_k, call.prompt_tokens)

    @unary_errors
    async def GetModel(self, request, context, call: CallInfo):
        key = self._caller(context, call, admitting=False)
        self.auth.check_model(key, convert.require_model(request.name))
        return convert.get_model_response(self.registry.lookup(request.name))

    @unary_errors
    async def Redact(self, request, context, call: CallInfo):
        self._caller(context, call)
        text, operator = convert.redact_request(request)
        result = await asyncio.to_thread(self.redaction.redactor.redact, text, operator=operator)
        for entity in result.entities:
            self.metrics.pii.labels(entity.type, "redact").inc()
        return convert.redact_response(result)

    @unary_errors
    async def ListModels(self, request, context, call: CallInfo):
        key = self._caller(context, call, admitting=False)
        visible = [m for m in self.registry.entries() if key.rights.allows_model(m.name)]
        return convert.list_models_response(visible)
