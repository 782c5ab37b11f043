"""The generation engine: where a request is scheduled, stepped and streamed back.

One engine thread owns the runner (ORT releases the GIL while it computes). Requests wait in a
bounded queue; the thread prefills one, decodes it token by token, and hands each TokenEvent to
the request's asyncio queue with `loop.call_soon_threadsafe`. This is the batch-1 engine of the
foundation; continuous batching replaces the inside of `_serve_one`, not this interface.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from typing import AsyncIterator, Callable, Optional, Protocol

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.detokenizer import IncrementalDetokenizer
from appliance.engine.request import FINISH_REASONS, GenerationRequest, RequestStatus, TokenEvent
from appliance.engine.sampling import SamplingParams, TokenChooser
from appliance.errors import Draining, InvalidRequest, QueueFull

log = logging.getLogger(__name__)

Emit = Callable[[TokenEvent], None]


class Runner(Protocol):
    context_length: int

    def prefill(self, prompt_ids: list[int]) -> np.ndarray: ...

    def decode(self, token_id: int) -> np.ndarray: ...


class GenerationEngine:
    def __init__(
        self,
        runner: Runner,
        tokenizer: Tokenizer,
        eos_token_ids: list[int],
        max_queue: int = 64,
        name: str = "engine",
    ):
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = runner.context_length
        self._queue: queue.Queue[tuple[GenerationRequest, Emit] | None] = queue.Queue(maxsize=max_queue)
        self._admitting = True
        self._running: Optional[GenerationRequest] = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- admission (any thread) -------------------------------------------------------------

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt).ids

    def submit(self, prompt_ids: list[int], params: SamplingParams, emit: Emit) -> GenerationRequest:
        if not self._admitting:
            raise Draining("the server is shutting down")
        if not prompt_ids:
            raise InvalidRequest("prompt", "tokenizes to no tokens")
        if len(prompt_ids) >= self.context_length:
            raise InvalidRequest(
                "prompt", f"has {len(prompt_ids)} tokens; the model's context holds {self.context_length}"
            )
        request = GenerationRequest(uuid.uuid4().hex, list(prompt_ids), params)
        try:
            self._queue.put_nowait((request, emit))
        except queue.Full:
            raise QueueFull(f"the queue holds {self._queue.maxsize} requests already") from None
        return request

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[TokenEvent]:
        """Streams a request's events; closing the iterator early cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        request = self.submit(prompt_ids, params, lambda e: loop.call_soon_threadsafe(events.put_nowait, e))
        try:
            while True:
                event = await events.get()
                if event.error is not None:
                    raise event.error
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            request.cancel()

    def stop_admitting(self) -> None:
        self._admitting = False

    @property
    def busy(self) -> bool:
        return self._running is not None or not self._queue.empty()

    def close(self, timeout: float = 5.0) -> None:
        self._admitting = False
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            request, emit = item
            if request.cancel_event.is_set():
                continue
            self._running = request
            try:
                self._serve_one(request, emit)
            except Exception as exc:  # the daemon outlives a failing request
                log.exception("request %s failed in the engine", request.request_id)
                request.status = RequestStatus.FINISHED_ERROR
                emit(TokenEvent((), "", finish_reason="error", error=exc))
            finally:
                self._running = None

    def _serve_one(self, request: GenerationRequest, emit: Emit) -> None:
        params = request.params
        chooser = TokenChooser(params)
        detok = IncrementalDetokenizer(self.tokenizer, request.prompt_ids)
        budget = min(params.max_tokens, self.context_length - len(request.prompt_ids))
        request.status = RequestStatus.RUNNING
        request.timings.start_ns = time.monotonic_ns()
        logits = self.runner.prefill(request.prompt_ids)
        while True:
            if request.cancel_event.is_set():
                request.status = RequestStatus.FINISHED_CANCELLED
                break
            token = chooser.choose(logits)
            request.output_ids.append(token)
            now = time.monotonic_ns()
            request.timings.first_token_ns = request.timings.first_token_ns or now
            request.timings.last_token_ns = now
            if token in self.eos_token_ids and not params.ignore_eos:
                request.status = RequestStatus.FINISHED_STOPPED
                break
            text = detok.push(token)
            if len(request.output_ids) >= budget:
                request.status = RequestStatus.FINISHED_LENGTH
                emit(TokenEvent((token,), text))
                break
            emit(TokenEvent((token,), text))
            logits = self.runner.decode(token)
        last_ids = (request.output_ids[-1],) if request.status == RequestStatus.FINISHED_STOPPED else ()
        emit(
            TokenEvent(
                last_ids,
                detok.flush(),
                finish_reason=FINISH_REASONS[request.status],
                prompt_tokens=len(request.prompt_ids),
                completion_tokens=len(request.output_ids),
                timings=request.timings,
            )
        )
