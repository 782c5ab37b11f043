"""The generation engine: one thread steps every admitted request together.

Each step has three phases with dataclass seams: `scheduler.schedule() -> Batch`, the runner
computes logits for the batch's prompt chunks and decode rows, and `_update` samples, detokenizes,
applies stop rules and hands each request its TokenEvent (through `loop.call_soon_threadsafe`
for asyncio callers). Requests join at any step and leave at any step; a cancelled request's row
is freed before the next step. ORT releases the GIL while it computes, so the asyncio server
stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Protocol

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.detokenizer import IncrementalDetokenizer
from appliance.engine.request import FINISH_REASONS, Emit, GenerationRequest, RequestStatus, TokenEvent
from appliance.engine.sampling import Choice, SamplingParams, TokenChooser
from appliance.engine.scheduler import Batch, MoveRow, RowOp, Scheduler, SchedulerConfig
from appliance.engine.stop import StopStrings
from appliance.errors import Draining, InvalidRequest, QueueFull

log = logging.getLogger(__name__)


class Runner(Protocol):
    context_length: int
    max_batch: int
    vocab_size: int
    provider: str  # the execution provider the session runs on
    # Decode steps run a multiple of row_quantum rows, one of row_quanta (see batch_invariance.py).
    row_quanta: tuple[int, ...]
    row_quantum: int

    def set_row_quantum(self, quantum: int) -> None: ...

    def prefill(self, slot: int, token_ids: list[int], start: int) -> np.ndarray: ...

    def decode(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray: ...

    def move(self, src: int, dst: int, length: int) -> None: ...

    def release(self, slot: int) -> None: ...


@dataclass
class RequestStream:
    """Per-request output state: sampling, detokenizing, stop strings."""

    chooser: TokenChooser
    detok: IncrementalDetokenizer
    stops: StopStrings


@dataclass(frozen=True)
class LoopSink:
    """Delivers a request's events into an asyncio queue on its event loop. The engine hands over
    a whole step's events for one loop in a single call: each call_soon_threadsafe writes to the
    loop's wake-up pipe, which cost as much as a tenth of a batch-8 step when done per token."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue

    def __call__(self, event: TokenEvent) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def _put_all(deliveries: list[tuple[asyncio.Queue, TokenEvent]]) -> None:
    for events, event in deliveries:
        events.put_nowait(event)


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    prefilling: int
    max_batch: int


class GenerationEngine:
    def __init__(self, runner: Runner, tokenizer: Tokenizer, eos_token_ids: list[int],
                 config: Optional[SchedulerConfig] = None, name: str = "engine"):
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = runner.context_length
        self.config = config or SchedulerConfig(max_batch=runner.max_batch)
        if self.config.max_batch > runner.max_batch:
            raise ValueError("scheduler max_batch exceeds the runner's KV rows")
        self.scheduler = Scheduler(self.config)
        self._inbox: queue.SimpleQueue[Optional[GenerationRequest]] = queue.SimpleQueue()
        self._admitted = 0  # submitted and not yet finished; guarded by _lock
        self._lock = threading.Lock()
        self._admitting = True
        self._closed = False
        # While a step's results are handed out: its LoopSink events, grouped by event loop.
        self._step_events: Optional[dict[asyncio.AbstractEventLoop, list]] = None
        # Monotonic time the loop last went round: the systemd watchdog is fed only while every
        # engine's is recent, so an engine stuck inside a runner call gets the daemon restarted.
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # ---- admission (any thread) -------------------------------------------------------------

    def tokenize(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt).ids

    def submit(self, prompt_ids: list[int], params: SamplingParams, emit: Emit,
               deadline_ns: int = 0) -> GenerationRequest:
        if not self._admitting:
            raise Draining("the server is shutting down")
        if not prompt_ids:
            raise InvalidRequest("prompt", "tokenizes to no tokens")
        if len(prompt_ids) >= self.context_length:
            raise InvalidRequest("prompt", f"has {len(prompt_ids)} tokens; the model's context holds "
                                           f"{self.context_length}")
        with self._lock:
            self._refuse_when_full()
            self._admitted += 1
        request = GenerationRequest(uuid.uuid4().hex, list(prompt_ids), params, emit, deadline_ns)
        self._inbox.put(request)
        return request

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       deadline_ns: int = 0) -> AsyncIterator[TokenEvent]:
        """Streams a request's events; closing the iterator early cancels the request."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[TokenEvent] = asyncio.Queue()
        request = self.submit(prompt_ids, params, LoopSink(loop, events), deadline_ns)
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
            self._inbox.put(None)  # wake the engine so the row is freed now

    def _refuse_when_full(self) -> None:
        if self._admitted - self.config.max_batch >= self.config.max_queue:
            raise QueueFull(f"{self.config.max_batch} requests run and {self.config.max_queue} wait already")

    def check_room(self) -> None:
        """QueueFull now if a request submitted now would be refused (submit decides for good)."""
        with self._lock:
            self._refuse_when_full()

    def stop_admitting(self) -> None:
        self._admitting = False

    @property
    def busy(self) -> bool:
        with self._lock:
            return self._admitted > 0

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(len(s.waiting), len(s.running), int(s.prefilling is not None), self.config.max_batch)

    def close(self, timeout: float = 5.0) -> None:
        self._admitting = False
        self._closed = True
        self._inbox.put(None)
        self._thread.join(timeout)

    # ---- engine thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._closed:
            self.heartbeat = time.monotonic()
            self._drain_inbox(block=not self.scheduler.has_work)
            self._reap()
            if not self.scheduler.has_work:
                continue
            try:
                self._step()
            except Exception as exc:  # the daemon outlives a failing step
                log.exception("engine step failed; failing the requests in it")
                self._fail_all(exc)

    def _drain_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._start(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _start(self, request: GenerationRequest) -> None:
        request.state = RequestStream(TokenChooser(request.params),
                                      IncrementalDetokenizer(self.tokenizer, request.prompt_ids),
                                      StopStrings(request.params.stop))
        self.scheduler.add(request)

    def _reap(self) -> None:
        """Frees cancelled and expired requests before the step is scheduled."""
        now = time.monotonic_ns()
        for request in self.scheduler.requests():
            if request.cancel_event.is_set():
                self._finish(request, RequestStatus.FINISHED_CANCELLED)
            elif request.expired(now):
                self._finish(request, RequestStatus.FINISHED_DEADLINE)

    def _step(self) -> None:
        batch = self.scheduler.schedule()
        if batch.empty:
            return
        prompt_logits = []
        for chunk in batch.prefills:
            if chunk.start == 0:
                chunk.request.timings.start_ns = time.monotonic_ns()
            logits = self.runner.prefill(chunk.request.row, chunk.tokens, chunk.start)
            if chunk.completes_prompt:
                prompt_logits.append((chunk.request, logits))
        decode_logits = None
        if batch.decode:
            tokens = np.fromiter((r.output_ids[-1] for r in batch.decode), np.int64, len(batch.decode))
            lengths = np.fromiter((r.cached_tokens for r in batch.decode), np.int64, len(batch.decode))
            decode_logits = self.runner.decode(tokens, lengths)  # [n, vocab]
        self._apply(self.scheduler.commit(batch))
        self._step_events = {}
        try:
            self._update(batch, prompt_logits, decode_logits)
        finally:
            self._deliver_step_events()

    def _update(self, batch: Batch, prompt_logits, decode_logits: Optional[np.ndarray]) -> None:
        rows = [(r, decode_logits[i]) for i, r in enumerate(batch.decode)] if decode_logits is not None else []
        rows += prompt_logits
        if decode_logits is not None and not prompt_logits and all(
                r.state.chooser.plain_greedy and not self._blocked(r) for r in batch.decode):
            # Every row is a bare argmax: one pass over [n, vocab] for the whole batch.
            picked = [(r, Choice(int(t))) for r, t in zip(batch.decode, np.argmax(decode_logits, axis=-1))]
        else:
            picked = [(r, r.state.chooser.choose(logits, self._blocked(r))) for r, logits in rows]
        for request, choice in picked:
            request.output_ids.append(choice.token_id)
        # Only now, with every row's token recorded, may rows finish: compaction moves a row's
        # cached positions, which count the token this step just wrote for it.
        for request, choice in picked:
            self._accept(request, choice)

    def _apply(self, ops: list[RowOp]) -> None:
        """Carries out the scheduler's row moves and releases on the runner, in order."""
        for op in ops:
            if isinstance(op, MoveRow):
                self.runner.move(op.src, op.dst, op.length)
            else:
                self.runner.release(op.row)

    def _blocked(self, request: GenerationRequest) -> tuple[int, ...]:
        """Tokens that would end the request before it has min_tokens."""
        params = request.params
        if len(request.output_ids) >= params.min_tokens:
            return ()
        ends = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        return tuple(sorted(ends))

    def _accept(self, request: GenerationRequest, choice: Choice) -> None:
        params, stream, token = request.params, request.state, choice.token_id
        now = time.monotonic_ns()
        request.timings.first_token_ns = request.timings.first_token_ns or now
        request.timings.last_token_ns = now
        logprobs = ((choice.logprob, choice.top_logprobs),) if choice.logprob is not None else ()
        if (token in self.eos_token_ids and not params.ignore_eos) or token in params.stop_token_ids:
            # The end token itself is not text; what was held back (a partial character or a
            # prefix of a stop string that never completed) is.
            return self._finish(request, RequestStatus.FINISHED_STOPPED, (token,), logprobs, flush=True)
        text, stop_hit = stream.stops.push(stream.detok.push(token))
        if stop_hit is not None:
            return self._finish(request, RequestStatus.FINISHED_STOPPED, (token,), logprobs, text)
        if len(request.output_ids) >= params.max_tokens or request.cached_tokens + 1 >= self.context_length:
            return self._finish(request, RequestStatus.FINISHED_LENGTH, (token,), logprobs, text, flush=True)
        self._emit(request, TokenEvent((token,), text, logprobs=logprobs))

    def _finish(self, request: GenerationRequest, status: RequestStatus, last_ids: tuple[int, ...] = (),
                logprobs=(), text: str = "", flush: bool = False) -> None:
        self._apply(self.scheduler.finish(request, status))
        stream = request.state
        if stream is not None and (flush or status in (RequestStatus.FINISHED_CANCELLED, RequestStatus.FINISHED_DEADLINE)):
            text += stream.stops.push(stream.detok.flush())[0] + stream.stops.flush()
        self._emit(request, TokenEvent(last_ids, text, finish_reason=FINISH_REASONS[status],
                                prompt_tokens=len(request.prompt_ids), completion_tokens=len(request.output_ids),
                                timings=request.timings, logprobs=logprobs))
        with self._lock:
            self._admitted -= 1

    def _emit(self, request: GenerationRequest, event: TokenEvent) -> None:
        """Hands an event to the caller; a caller that is gone (closed loop) cancels its request."""
        sink = request.emit
        if self._step_events is not None and isinstance(sink, LoopSink):
            self._step_events.setdefault(sink.loop, []).append((request, event))
            return
        try:
            sink(event)
        except Exception:
            request.cancel()

    def _deliver_step_events(self) -> None:
        step_events, self._step_events = self._step_events, None
        for loop, items in (step_events or {}).items():
            try:
                loop.call_soon_threadsafe(_put_all, [(request.emit.queue, event) for request, event in items])
            except Exception:  # the loop is closed: its callers are gone
                for request, _ in items:
                    request.cancel()

    def _fail_all(self, exc: Exception) -> None:
        s = self.scheduler
        for request in s.requests():
            self._apply(s.finish(request, RequestStatus.FINISHED_ERROR))
            self._emit(request, TokenEvent((), "", finish_reason=FINISH_REASONS[RequestStatus.FINISHED_ERROR], error=exc))
            with self._lock:
                self._admitted -= 1
