"""Which requests run in the next step: continuous batching over rows of one KV buffer.

The scheduler owns the queue and the row layout and never touches ONNX Runtime (tests drive it
with fake runners). Invariant between steps: rows 0..r-1 hold RUNNING requests (the decode
batch), and at most one PREFILLING request holds row r, part of its prompt written. A finished
or cancelled request's row is filled by moving the last running row into it, so the batch stays
contiguous; a prefilling row then slides down behind the running ones. The scheduler only plans
those row operations: `schedule` (in the batch), `finish` and `commit` return them, and the engine
applies them to the runner.

With a prefix cache (prefix_cache.py), a request admitted to a row first gets the longest cached
prefix of its prompt copied into that row (CopyBlocks, before the step's runs) and prefills only
the rest; a completed prompt's blocks, and with `cache_generated` a finished request's history,
are stored into the pool (StoreBlocks) before anything moves over its row.

A released row keeps its KV, so a request admitted while no other is held may be given another
row than 0 (`idle_row`, the runner's choice: the row that still holds most of its cached prefix,
if it holds less of other prefixes, which the request would overwrite; else an empty row, else
the one written least recently). It runs there alone; the next request admitted first moves it to
row 0 (`Batch.moves`), and the invariant above holds again. A support bot's next question, or a
chat's next turn, then finds its prefix in place although a request with another prefix ran in
between.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

from appliance.engine.prefix_cache import PrefixCache
from appliance.engine.request import GenerationRequest, RequestStatus


@dataclass(frozen=True)
class MoveRow:
    """Copy a row's first `length` cached positions into another row (the source is then free)."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True)
class ReleaseRow:
    """A row no request holds any more."""

    row: int


@dataclass(frozen=True)
class CopyBlocks:
    """Copy pool slots into row `row`, slot i at positions [i * block, (i + 1) * block); the row
    then holds its first `length` positions (the last block may be a partial hit's)."""

    request: GenerationRequest  # whose pinned blocks these are: the engine unpins them once copied
    row: int
    slots: tuple[int, ...]
    length: int


@dataclass(frozen=True)
class StoreBlocks:
    """Copy row `row`'s positions [p, p + block) into pool slot s, for each (s, p)."""

    row: int
    blocks: tuple[tuple[int, int], ...]


RowOp = Union[MoveRow, ReleaseRow, CopyBlocks, StoreBlocks]  # applied in order


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8
    # Tokens one step may compute (decode rows count one each); bounds a step's latency. A step's
    # first prompt chunk runs even where the decode rows leave less room than it needs.
    max_step_tokens: int = 256
    # Prompts are cut at multiples of this (whatever else runs), so running streams keep their pace.
    prefill_chunk: int = 128
    max_queue: int = 64
    # With a prefix cache: whether a finished request's generated tokens enter it too. Decode
    # wrote their KV one token at a time, which rounds differently from a prompt's chunked prefill,
    # so a later hit on them may change tokens (the prompt-only cache never does).
    cache_generated: bool = False
    # The prefix cache's pool (0: no cache) and the tokens per cached block (divides prefill_chunk).
    prefix_cache_bytes: int = 0
    prefix_block_tokens: int = 16
    # 0: a hit ends at a block boundary and its rest prefills in the cold prompt's chunks. q > 0:
    # a hit may end at any multiple of q tokens, inside a cached block (the prompt's next ids
    # match that block's first ones), and a rest that fits in prefill_chunk tokens runs as one
    # chunk, not two where it crosses a multiple. Set from the load-time probe
    # (batch_invariance.probe_hit_quantum), only where such rests give a cold prompt's logits bit
    # for bit on this host: hits then still never change tokens.
    hit_quantum: int = 0


@dataclass(frozen=True)
class PrefillChunk:
    request: GenerationRequest
    tokens: list[int]
    start: int

    @property
    def completes_prompt(self) -> bool:
        return self.start + len(self.tokens) == len(self.request.prompt_ids)


@dataclass
class Batch:
    # Row operations before anything else runs: the lone request of an idle admission moved to
    # row 0, so that the request admitted now can join it.
    moves: list[RowOp] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Cached prefixes to copy into newly admitted rows, before any prefill runs.
    copies: list[CopyBlocks] = field(default_factory=list)
    # Requests in rows 0..n-1, in row order.
    decode: list[GenerationRequest] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decode


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: Optional[PrefixCache] = None,
                 idle_row: Optional[Callable[[tuple[int, ...]], int]] = None):
        """idle_row: the row for a request admitted while none is held, given its hit's pool slots
        (without it, such a request takes row 0 like any other)."""
        self.config = config
        self.cache = cache
        self.idle_row = idle_row
        self.waiting: deque[GenerationRequest] = deque()
        # index == row (but for a lone request in its idle_row)
        self.running: list[GenerationRequest] = []
        self.prefilling: Optional[GenerationRequest] = None  # at row len(running) (or alone, its idle_row)
        self._pending_running: list[GenerationRequest] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def add(self, request: GenerationRequest) -> None:
        self.waiting.append(request)

    def schedule(self) -> Batch:
        """Decode every running row, then fill the step's token budget with prompt chunks.

        A prompt is cut at multiples of prefill_chunk whatever else runs: kernels may round a chunk
        of S tokens differently from S smaller pieces, so a cut shaped by the budget left over would
        make a request's tokens depend on its batch (a hit's rest is the one exception, where the
        probe allows it: hit_quantum). A chunk that does not fit waits for the next
        step, except the step's first, which always runs (the step may then exceed its budget by
        less than one chunk) so that prompts progress however many rows decode.
        """
        batch = Batch(decode=list(self.running))
        budget = self.config.max_step_tokens - len(batch.decode)
        rows_taken = len(self.running)
        while rows_taken < self.config.max_batch:
            request = self.prefilling or self._peek_waiting()
            if request is None:
                break
            hit, hit_tokens = self._usable_hit(request) if request.row < 0 else ([], 0)
            start = request.prefilled or hit_tokens  # one chunk per step
            size = self._chunk_size(request, start, hit_tokens if request.row < 0 else request.prefix_hit)
            if size > budget and batch.prefills:
                break
            if request.row < 0:
                if self.running and self.running[0].row != 0:  # a lone request elsewhere: contiguity first
                    batch.moves += self._bring_to_row_0(self.running[0])
                self.waiting.popleft()
                request.row = self._admission_row(hit, rows_taken)
                request.status = RequestStatus.PREFILLING
                self.prefilling = request
                self._admit(request, hit, hit_tokens, batch)
            batch.prefills.append(PrefillChunk(request, request.prompt_ids[start : start + size], start))
            budget -= size
            if start + size < len(request.prompt_ids):
                break  # the rest of this prompt waits for the next step; nobody queues behind it
            self.prefilling = None
            rows_taken += 1
            if request.row != rows_taken - 1:
                break  # admitted to another row while idle: it runs alone for now
        # Prompts completed in this batch become running rows, in row order, after the step.
        self._pending_running = [c.request for c in batch.prefills if c.completes_prompt]
        return batch

    def _admission_row(self, hit: list, rows_taken: int) -> int:
        """Row rows_taken, or where the engine holds no request, the runner's idle_row."""
        if self.idle_row is None or self.running or rows_taken:
            return rows_taken
        return self.idle_row(tuple(block.slot for block in hit))

    def _bring_to_row_0(self, request: GenerationRequest) -> list[RowOp]:
        row = request.row
        return [self._relocate(request, 0), ReleaseRow(row)]

    def _chunk_size(self, request: GenerationRequest, start: int, hit_tokens: int) -> int:
        """Tokens of the prompt's chunk that starts at `start`: up to the next multiple of
        prefill_chunk, or with hit_quantum the whole rest of a hit that fits in one chunk."""
        chunk, rest = self.config.prefill_chunk, len(request.prompt_ids) - start
        if self.config.hit_quantum and hit_tokens and start == hit_tokens and rest <= chunk:
            return rest
        return min(rest, chunk - start % chunk)

    def _usable_hit(self, request: GenerationRequest) -> tuple[list, int]:
        """(cached blocks, tokens) a new request may copy: the longest cached prefix that leaves the
        logits' position to compute and whose rest prefills as exactly as a cold prompt's would.
        With hit_quantum it may end inside its last block, at a multiple of the quantum.

        Kernels round a chunk of one token differently from longer ones (0.77 in the logits on an
        int4 package), and a cold prompt's chunks are cut at multiples of prefill_chunk. So a hit
        may leave a one-token rest only where the cold prompt ends in a one-token chunk too (the
        hit ends at a multiple of prefill_chunk); elsewhere it gives back a block (or a quantum of
        a partial one), and at least two tokens are recomputed. A fully cached prompt therefore
        re-runs only its last token just where that is exact.
        """
        if self.cache is None:
            return [], 0
        prompt, size, quantum = request.prompt_ids, self.cache.block_tokens, self.config.hit_quantum
        most = len(prompt) - 1  # the last position's logits are computed
        hit = self.cache.match(prompt, most // size)
        tokens = len(hit) * size
        if 0 < quantum < size:
            partial, length = self.cache.match_partial(prompt, hit, most - tokens)
            if length >= quantum:
                hit.append(partial)
                tokens += length - length % quantum
        if tokens and len(prompt) - tokens == 1 and tokens % self.config.prefill_chunk:
            tokens -= min(quantum, size) if quantum else size
        if hit and tokens <= (len(hit) - 1) * size:
            hit.pop()
        return hit, tokens

    def _admit(self, request: GenerationRequest, hit: list, hit_tokens: int, batch: Batch) -> None:
        """Pins the hit's blocks until the engine has copied them into the request's row."""
        if self.cache is None:
            return
        self.cache.record_lookup(len(request.prompt_ids), hit_tokens)
        if hit:
            self.cache.pin(hit)
            request.pinned = hit
            request.prefilled = request.prefix_hit = hit_tokens
            batch.copies.append(CopyBlocks(request, request.row, tuple(b.slot for b in hit), hit_tokens))

    def copied(self, op: CopyBlocks) -> None:
        """The engine applied `op`: its request's blocks may be evicted again."""
        self._unpin(op.request)

    def _unpin(self, request: GenerationRequest) -> None:
        if request.pinned:
            self.cache.unpin(request.pinned)
            request.pinned = []

    def _store(self, request: GenerationRequest, tokens: list[int], positions: int) -> list[RowOp]:
        """Plans storing the first `positions` of the request's row (their ids: tokens) in the pool."""
        blocks = self.cache.insert(tokens, positions) if self.cache is not None else []
        return [StoreBlocks(request.row, tuple(blocks))] if blocks else []

    def _peek_waiting(self) -> Optional[GenerationRequest]:
        """The first waiting request that is still wanted, left at the queue's head."""
        while self.waiting and self.waiting[0].status.finished:
            self.waiting.popleft()
        return self.waiting[0] if self.waiting else None

    def commit(self, batch: Batch) -> list[RowOp]:
        """After the step ran: record prefill progress, promote completed prompts to running;
        returns the prompts' blocks to store, then the row moves that keep the prefilling row behind
        the running ones."""
        ops: list[RowOp] = []
        for chunk in batch.prefills:
            chunk.request.prefilled = chunk.start + len(chunk.tokens)
            if chunk.completes_prompt:
                ops += self._store(chunk.request, chunk.request.prompt_ids, chunk.request.prefilled)
        for request in self._pending_running:
            request.status = RequestStatus.RUNNING
            self.running.append(request)
        self._pending_running = []
        # (A prefilling request with no running one may sit in its idle_row.)
        if self.prefilling is not None and self.running and self.prefilling.row != len(self.running):
            ops.append(self._relocate(self.prefilling, len(self.running)))
        return ops

    def requests(self) -> list[GenerationRequest]:
        """Every request held: running, prefilling, completing its prompt in the step now running
        (until commit: a step that fails must still find and fail it), waiting."""
        prefilling = [self.prefilling] if self.prefilling is not None else []
        return [*self.running, *prefilling, *self._pending_running, *self.waiting]

    def finish(self, request: GenerationRequest, status: RequestStatus) -> list[RowOp]:
        """Frees a request's row (compacting the batch) or drops it from the queue; returns the
        row operations that compaction takes."""
        ops: list[RowOp] = []
        self._unpin(request)  # cancelled between its match and the copy
        if self.config.cache_generated and request in self.running and status < RequestStatus.FINISHED_ERROR:
            ops += self._store(request, request.prompt_ids + request.output_ids, request.cached_tokens)
        request.status = status
        if request in self._pending_running:  # its step failed before commit
            self._pending_running.remove(request)
        # Compaction empties the highest occupied row (a lone request's own, wherever it is),
        # whichever request left.
        freed, had_row = request.row, request.row >= 0
        if request is self.prefilling:
            self.prefilling = None
        elif request in self.running:
            index, last = self.running.index(request), len(self.running) - 1
            if index != last:
                moved = self.running[last]
                freed = moved.row
                ops.append(self._relocate(moved, request.row))
                self.running[index] = moved
            self.running.pop()
            if self.prefilling is not None:
                freed = self.prefilling.row
                ops.append(self._relocate(self.prefilling, len(self.running)))
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        request.row = -1
        if had_row:
            ops.append(ReleaseRow(freed))
        return ops

    def _relocate(self, request: GenerationRequest, row: int) -> MoveRow:
        move = MoveRow(request.row, row, request.cached_tokens)
        request.row = row
        return move
