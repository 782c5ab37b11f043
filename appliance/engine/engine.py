"""The generation engine: one thread steps every admitted request together.

Each step has three phases with dataclass seams: `scheduler.schedule() -> Batch`, the runner
computes logits for the batch's prompt chunks and decode rows, and `_update` samples and hands
each token to the output stage (output.py: detokenizing, stop rules, the TokenEvent), whose events
delivery.py hands to their callers. Requests join at any step and leave at any step; a cancelled
request's row is freed before the next step. ORT releases the GIL while it computes, so the
asyncio server stays responsive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator, Optional, Protocol

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.delivery import Delivery, LoopSink
from appliance.engine.output import OutputStage
from appliance.engine.prefix_cache import PrefixCache, PrefixCacheStats
from appliance.engine.prompt_tokenizer import PromptTokenizer
from appliance.engine.request import FINISHED_STATES, Emit, GenerationRequest, RequestStatus, TokenEvent
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import Batch, MoveRow, ReleaseRow, RowOp, Scheduler, SchedulerConfig, StoreBlocks
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

    # A runner that keeps a prefix cache also has allocate_prefix_pool(block_tokens, budget_bytes)
    # -> (slots, block_bytes), load_blocks(slot, pool_slots, length) and store_blocks(slot, ((pool_slot,
    # position), ...)) (SharedKVRunner); one without them serves with the cache off. One that also has
    # idle_row(pool_slots) -> row places a request admitted while none is held in that row, and
    # then decodes it there alone: decode(token_ids, lengths, first_row=row).


def keeps_prefixes(runner: Runner) -> bool:
    """Whether `runner` can hold a prefix cache's pool (a concat-KV runner cannot)."""
    return hasattr(runner, "allocate_prefix_pool")


@dataclass(frozen=True)
class EngineStats:
    waiting: int
    running: int
    prefilling: int
    max_batch: int
    admitted: int = 0  # submitted and not yet finished: waiting in the inbox or the scheduler, or running


class GenerationEngine:
    def __init__(self, runner: Runner, tokenizer: Tokenizer, eos_token_ids: list[int],
                 config: Optional[SchedulerConfig] = None, name: str = "engine"):
        self.runner = runner
        self.tokenizer = tokenizer
        self.prompt_tokenizer = PromptTokenizer(tokenizer)  # reuses the ids of a prompt's seen leading text
        self.eos_token_ids = frozenset(eos_token_ids)
        self.context_length = runner.context_length
        self.output = OutputStage(tokenizer, self.eos_token_ids, self.context_length)
        self.delivery = Delivery()
        self.config = config or SchedulerConfig(max_batch=runner.max_batch)
        if self.config.max_batch > runner.max_batch:
            raise ValueError("scheduler max_batch exceeds the runner's KV rows")
        self.prefix_cache = self._open_prefix_cache(name)
        idle_row = getattr(runner, "idle_row", None) if self.prefix_cache is not None else None
        self.scheduler = Scheduler(self.config, self.prefix_cache, idle_row)
        self._inbox: queue.SimpleQueue[Optional[GenerationRequest]] = queue.SimpleQueue()
        self._admitted = 0  # submitted and not yet finished; guarded by _lock
        self._lock = threading.Lock()
        self._admitting = True
        self._closed = False
        self._held_ops: Optional[list[RowOp]] = None  # a step's row operations, run after its tokens are out
        # Monotonic time the loop last went round: the systemd watchdog is fed only while every
        # engine's is recent, so an engine stuck inside a runner call gets the daemon restarted.
        self.heartbeat = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _open_prefix_cache(self, name: str) -> Optional[PrefixCache]:
        """The pool is allocated here, at its whole budget, so a start shows what it costs."""
        budget, block_tokens = self.config.prefix_cache_bytes, self.config.prefix_block_tokens
        if not budget:
            return None
        if self.config.prefill_chunk % block_tokens:
            raise ValueError("prefix_block_tokens must divide prefill_chunk")
        if not keeps_prefixes(self.runner):
            log.info("%s: this graph's runner keeps no prefix cache; every prompt is prefilled whole", name)
            return None
        slots, block_bytes = self.runner.allocate_prefix_pool(block_tokens, budget)
        log.info("%s: prefix cache of %d blocks of %d tokens, %.1f MB allocated", name, slots, block_tokens,
                 slots * block_bytes / 2**20)
        return PrefixCache(slots, block_tokens, block_bytes) if slots else None

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """A snapshot of the prefix cache's counters (all zero without one); any thread."""
        return self.prefix_cache.stats() if self.prefix_cache is not None else PrefixCacheStats()

    # ---- admission (any thread) -------------------------------------------------------------

    def tokenize(self, prompt: str) -> list[int]:
        return self.prompt_tokenizer.encode(prompt)

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
            self.cancel(request)

    def cancel(self, request: GenerationRequest) -> None:
        """Cancels `request` and wakes the engine, so its row is freed now (any thread)."""
        request.cancel()
        self._inbox.put(None)

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
        with self._lock:
            admitted = self._admitted
        return EngineStats(len(s.waiting), len(s.running), int(s.prefilling is not None), self.config.max_batch,
                           admitted)

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
                    self.output.open(item)
                    self.scheduler.add(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _reap(self) -> None:
        """Frees cancelled and expired requests before the step is scheduled."""
        now = time.monotonic_ns()
        for request in self.scheduler.requests():
            if request.cancel_event.is_set():
                self._interrupt(request, RequestStatus.FINISHED_CANCELLED)
            elif request.expired(now):
                self._interrupt(request, RequestStatus.FINISHED_DEADLINE)

    def _step(self) -> None:
        batch = self.scheduler.schedule()
        if batch.empty:
            return
        self._apply(batch.moves)
        self._apply(batch.copies)
        prompt_logits = []
        for chunk in batch.prefills:
            if not chunk.request.timings.start_ns:
                chunk.request.timings.start_ns = time.monotonic_ns()
            logits = self.runner.prefill(chunk.request.row, chunk.tokens, chunk.start)
            if chunk.completes_prompt:
                prompt_logits.append((chunk.request, logits))
        decode_logits = None
        if batch.decode:
            tokens = np.fromiter((r.output_ids[-1] for r in batch.decode), np.int64, len(batch.decode))
            lengths = np.fromiter((r.cached_tokens for r in batch.decode), np.int64, len(batch.decode))
            first_row = batch.decode[0].row  # 0, but for a lone request where idle_row put it
            decode_logits = (self.runner.decode(tokens, lengths, first_row=first_row) if first_row
                             else self.runner.decode(tokens, lengths))  # [n, vocab]
        # The step's row operations (its prompts' stores into the prefix cache, a finished
        # request's stores and the compaction after it) wait until its tokens are handed out: none
        # changes a token of this step, and done first they held a seen prefix's first token back
        # by a millisecond. They keep their order, and run before the next step whatever happens.
        self._held_ops = self.scheduler.commit(batch)
        self.delivery.begin_step()
        try:
            self._update(batch, prompt_logits, decode_logits)
        finally:
            self.delivery.end_step()
            ops, self._held_ops = self._held_ops, None
            self._apply(ops)

    def _update(self, batch: Batch, prompt_logits, decode_logits: Optional[np.ndarray]) -> None:
        requests = list(batch.decode) + [request for request, _ in prompt_logits]
        if not requests:  # the step only prefilled chunks that end no prompt
            return
        logits = decode_logits  # [len(batch.decode), vocab]
        if prompt_logits:  # rare (a prompt's last chunk): one [vocab] row each, stacked under the decode rows
            rows = [logits] if logits is not None else []
            logits = np.vstack(rows + [row for _, row in prompt_logits])
        picked = list(zip(requests, self.output.choose(requests, logits)))
        for request, choice in picked:
            request.output_ids.append(choice.token_id)
        # Only now, with every row's token recorded, may rows finish: compaction moves a row's
        # cached positions, which count the token this step just wrote for it.
        accept = self.output.accept
        for request, choice in picked:
            event = accept(request, choice)
            if event.finish_reason is None:
                self.delivery.emit(request, event)
            else:
                self._finish(request, FINISHED_STATES[event.finish_reason], event)

    def _apply(self, ops: list[RowOp]) -> None:
        """Carries out the scheduler's row operations on the runner, in order."""
        runner = self.runner
        for op in ops:
            if isinstance(op, MoveRow):
                runner.move(op.src, op.dst, op.length)
            elif isinstance(op, ReleaseRow):
                runner.release(op.row)
            elif isinstance(op, StoreBlocks):
                runner.store_blocks(op.row, op.blocks)
            else:
                runner.load_blocks(op.row, op.slots, op.length)
                self.scheduler.copied(op)

    def _interrupt(self, request: GenerationRequest, status: RequestStatus) -> None:
        self._finish(request, status, self.output.interrupted(request, status))

    def _finish(self, request: GenerationRequest, status: RequestStatus, event: TokenEvent) -> None:
        ops = self.scheduler.finish(request, status)
        if self._held_ops is not None:  # within a step: after its tokens are out
            self._held_ops += ops
        else:
            self._apply(ops)
        if request.prefix_hit:
            event = dataclasses.replace(event, cached_tokens=request.prefix_hit)
        self.delivery.emit(request, event)
        with self._lock:
            self._admitted -= 1

    def _fail_all(self, exc: Exception) -> None:
        s = self.scheduler
        for request in s.requests():
            self._finish(request, RequestStatus.FINISHED_ERROR, self.output.failed(exc))
        if s.cache is not None:  # the failed step's stores may not have happened: no hit may read them
            s.cache.clear()
