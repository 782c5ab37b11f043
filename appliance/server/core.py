"""What every door (gRPC, the OpenAI HTTP API) does the same way: the caller's key, the served
model, admission (rate, token quota, concurrency, a full engine), redaction, the engine stream,
and metering (access log, metrics, usage rows). A door only turns its wire format into these
calls and their results back into its own."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Optional, Sequence

import grpc
import numpy as np

from appliance.engine.chat import ChatMessage
from appliance.engine.request import TokenEvent
from appliance.engine.sampling import SamplingParams
from appliance.errors import Draining, InvalidRequest, WrongTask
from appliance.registry import ModelRegistry, ServedModel
from appliance.server.auth import Authenticator
from appliance.server.errors import CallInfo
from appliance.server.keys import ApiKey
from appliance.server.metrics import Metrics
from appliance.server.redaction import RedactionStage
from appliance.server.request_limits import check_texts, require_model
from appliance.server.usage import UsageEvent, UsageLog

access_log = logging.getLogger("appliance.access")


@dataclass(frozen=True)
class TextRequest:
    """A validated generation request, whichever door it came in by."""

    prompt: str
    messages: Optional[list[ChatMessage]]  # None: a raw prompt
    params: SamplingParams
    input_policy: Optional[str] = None  # None: the server's default
    output_policy: Optional[str] = None
    deadline_ns: int = 0  # on the monotonic clock; 0: none


@dataclass(frozen=True)
class TextPiece:
    """One engine event after the output redaction stage; the last has the audit counts."""

    event: TokenEvent
    text: str
    hides_tokens: bool
    redacted: Optional[dict[tuple[str, str], int]] = None
    model_version: str = ""


def generates(model: ServedModel) -> bool:
    return model.engine is not None


def embeds(model: ServedModel) -> bool:
    return model.embedder is not None


def labels_itself(model: ServedModel) -> bool:
    """A sequence classifier: its own labels (a token classifier's are per token, not per text)."""
    return model.classifier is not None and not model.classifier.per_token


def classifies(model: ServedModel) -> bool:
    """Classify serves a sequence classifier, or an embedder labelling zero-shot."""
    return labels_itself(model) or embeds(model)


async def encode(work, deadline_ns: int = 0):
    """Runs `work(stop=...)` (encoder sub-batches) in a worker thread. A client that goes away or a
    deadline that passes cancels this task; `stop()` then tells the worker to end before its next
    sub-batch, and the caller's model hold and lease last until it has."""
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


class InferenceCore:
    def __init__(self, registry: ModelRegistry, default_max_tokens: int, redaction: RedactionStage,
                 auth: Authenticator, metrics: Metrics, usage: Optional[UsageLog] = None):
        self.registry = registry
        self.default_max_tokens = default_max_tokens
        self.redaction = redaction
        self.auth = auth
        self.metrics = metrics
        self.usage = usage
        self.draining = False
        self.active_streams = 0  # generation streams of both doors; the drain waits for them

    def caller(self, authorization: str, call: CallInfo, admitting: bool = True) -> ApiKey:
        """The key of an `authorization` value (UNAUTHENTICATED without a valid one); refuses new
        work while draining."""
        key = self.auth.identify_header(authorization)
        call.key_id = key.id
        if admitting and self.draining:
            raise Draining("the server is draining; retry on another appliance")
        return key

    @contextlib.contextmanager
    def served(self, call: CallInfo, key: ApiKey, name: str, serves: Callable[[ServedModel], bool], needs: str):
        """The ready model `name` for this key, held (a hot reload cannot close it) until the block
        ends; WrongTask naming `needs` unless `serves(model)`."""
        self.auth.check_model(key, require_model(name))
        with self.registry.hold(name) as model:
            call.model = model.name
            if not serves(model):
                raise WrongTask(f"model {model.name!r} is a {model.manifest.task} model; this call needs {needs}")
            yield model

    def visible_models(self, key: ApiKey) -> list[ServedModel]:
        return [m for m in self.registry.entries() if key.rights.allows_model(m.name)]

    def finished(self, call: CallInfo, status: grpc.StatusCode) -> None:
        """Meters every call's end: an access log line, metrics by status, usage per key, model, day."""
        access_log.info("rpc finished", extra={"fields": {
            "request_id": call.request_id, "api": call.api, "rpc": call.rpc, "model": call.model,
            "key_id": call.key_id, "status": status.name, "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens}})
        self.metrics.requests.labels(call.api, call.rpc, call.model or "-", status.name).inc()
        if self.usage is not None and call.key_id and call.model:
            self.usage.record(UsageEvent(call.key_id, call.model, call.prompt_tokens, call.completion_tokens,
                                         cancelled=status is grpc.StatusCode.CANCELLED,
                                         rejected=status not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED)))

    async def generate(self, call: CallInfo, key: ApiKey, name: str,
                       parse: Callable[[ServedModel], TextRequest]) -> AsyncIterator[TextPiece]:
        """Streams a generation; close the iterator (contextlib.aclosing) to cancel it in the engine.

        `parse(model)` reads the request's fields once the model is known to be served, so an
        unknown model answers NOT_FOUND whatever else the request got wrong.
        """
        with self.served(call, key, name, generates, "text-generation") as model:
            request = parse(model)
            # Closed here, not by the garbage collector, so the row is freed before the hold ends.
            async with contextlib.aclosing(self._generate(call, key, model, request)) as pieces:
                async for piece in pieces:
                    yield piece

    async def _generate(self, call: CallInfo, key: ApiKey, model: ServedModel, request: TextRequest):
        messages = request.messages
        if messages is not None and model.chat is None:
            raise InvalidRequest("messages", f"model {model.name!r} has no chat template; send a prompt")
        redaction = self.redaction.for_request(request.input_policy, request.output_policy, key.rights)
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
        # tokenized, as for encoders. The token quota needs no count yet: admit asks only whether
        # credit is left, and the tokens used are charged when the lease is released.
        lease = self.auth.admit(key)
        try:
            engine.check_room()
            prompt_ids = await asyncio.to_thread(prepare)
            call.prompt_tokens = len(prompt_ids)
            self.active_streams += 1
            try:
                async with contextlib.aclosing(engine.generate(prompt_ids, request.params,
                                                               request.deadline_ns)) as events:
                    async for event in events:
                        call.completion_tokens += len(event.token_ids)
                        # ... and on the way out: every streamed delta passes the output stage.
                        text = redaction.output(event.text)
                        if event.finish_reason is None:
                            yield TextPiece(event, text, redaction.hides_tokens)
                            continue
                        call.completion_tokens = event.completion_tokens
                        text += redaction.finish()
                        redacted = self.redaction.audit(call.request_id, redaction)
                        self._observe_generation(call.api, model.name, event, redacted)
                        yield TextPiece(event, text, redaction.hides_tokens, redacted, model.version)
            finally:
                self.active_streams -= 1
                self.metrics.observe_engine(model.name, engine.stats())
        finally:
            lease.release(call.prompt_tokens + call.completion_tokens)

    def _observe_generation(self, api: str, model: str, event: TokenEvent,
                            redacted: dict[tuple[str, str], int]) -> None:
        timings, metrics = event.timings, self.metrics
        metrics.tokens.labels(model, "prompt").inc(event.prompt_tokens)
        metrics.tokens.labels(model, "completion").inc(event.completion_tokens)
        if timings is not None:
            metrics.queue_time.labels(model).observe(timings.queue_ns / 1e9)
            if timings.first_token_ns:
                metrics.time_to_first_token.labels(api, model).observe(timings.time_to_first_token_ns / 1e9)
            if event.completion_tokens > 1:
                metrics.inter_token.labels(model).observe(timings.decode_ns / 1e9 / (event.completion_tokens - 1))
        for (direction, entity_type), count in redacted.items():
            metrics.pii.labels(entity_type, direction).inc(count)

    async def embed(self, call: CallInfo, key: ApiKey, name: str, texts: Callable[[], Sequence[str]],
                    normalize: bool, deadline_ns: int = 0) -> np.ndarray:
        """The texts' vectors; `texts()` is read once the model is known to be served."""
        with self.served(call, key, name, embeds, "feature-extraction") as model:
            lease = self.auth.admit(key)
            try:
                work = functools.partial(model.embedder.embed, check_texts(texts()), normalize)
                vectors, call.prompt_tokens = await encode(work, deadline_ns)
            finally:
                lease.release(call.prompt_tokens)
        self.metrics.tokens.labels(model.name, "prompt").inc(call.prompt_tokens)
        return vectors
