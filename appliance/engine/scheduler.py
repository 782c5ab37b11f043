"""Which requests run in the next step: continuous batching over rows of one KV buffer.

The scheduler owns the queue and the row layout and never touches ONNX Runtime (tests drive it
with fake runners). Invariant between steps: rows 0..r-1 hold RUNNING requests (the decode
batch), and at most one PREFILLING request holds row r, part of its prompt written. A finished
or cancelled request's row is filled by moving the last running row into it, so the batch stays
contiguous; a prefilling row then slides down behind the running ones. The scheduler only plans
those row operations: `finish` and `commit` return them, and the engine applies them to the runner.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Union

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


RowOp = Union[MoveRow, ReleaseRow]  # applied in order


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch: int = 8
    # Tokens one step may compute (decode rows count one each); bounds a step's latency. A step's
    # first prompt chunk runs even where the decode rows leave less room than it needs.
    max_step_tokens: int = 256
    # Prompts are cut at multiples of this (whatever else runs), so running streams keep their pace.
    prefill_chunk: int = 128
    max_queue: int = 64


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
    prefills: list[PrefillChunk] = field(default_factory=list)
    # Requests in rows 0..n-1, in row order.
    decode: list[GenerationRequest] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decode


class Scheduler:
    def __init__(self, config: SchedulerConfig):
        self.config = config
        self.waiting: deque[GenerationRequest] = deque()
        self.running: list[GenerationRequest] = []  # index == row
        self.prefilling: Optional[GenerationRequest] = None  # at row len(running)
        self._pending_running: list[GenerationRequest] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def add(self, request: GenerationRequest) -> None:
        self.waiting.append(request)

    def schedule(self) -> Batch:
        """Decode every running row, then fill the step's token budget with prompt chunks.

        A prompt is cut at multiples of prefill_chunk whatever else runs: kernels round a chunk of
        S tokens differently from S smaller pieces, so a cut shaped by the budget left over would
        make a request's tokens depend on its batch. A chunk that does not fit waits for the next
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
            start = request.prefilled  # a request gets at most one chunk per step
            size = min(len(request.prompt_ids) - start, self.config.prefill_chunk)
            if size > budget and batch.prefills:
                break
            if request.row < 0:
                self.waiting.popleft()
                request.row = rows_taken
                request.status = RequestStatus.PREFILLING
                self.prefilling = request
            batch.prefills.append(PrefillChunk(request, request.prompt_ids[start : start + size], start))
            budget -= size
            if start + size < len(request.prompt_ids):
                break  # the rest of this prompt waits for the next step; nobody queues behind it
            self.prefilling = None
            rows_taken += 1
        # Prompts completed in this batch become running rows, in row order, after the step.
        self._pending_running = [c.request for c in batch.prefills if c.completes_prompt]
        return batch

    def _peek_waiting(self) -> Optional[GenerationRequest]:
        """The first waiting request that is still wanted, left at the queue's head."""
        while self.waiting and self.waiting[0].status.finished:
            self.waiting.popleft()
        return self.waiting[0] if self.waiting else None

    def commit(self, batch: Batch) -> list[RowOp]:
        """After the step ran: record prefill progress, promote completed prompts to running;
        returns the row moves that keep the prefilling row behind the running ones."""
        for chunk in batch.prefills:
            chunk.request.prefilled = chunk.start + len(chunk.tokens)
        for request in self._pending_running:
            request.status = RequestStatus.RUNNING
            self.running.append(request)
        self._pending_running = []
        if self.prefilling is not None and self.prefilling.row != len(self.running):
            return [self._relocate(self.prefilling, len(self.running))]
        return []

    def requests(self) -> list[GenerationRequest]:
        """Every request held: running, prefilling, completing its prompt in the step now running
        (until commit: a step that fails must still find and fail it), waiting."""
        prefilling = [self.prefilling] if self.prefilling is not None else []
        return [*self.running, *prefilling, *self._pending_running, *self.waiting]

    def finish(self, request: GenerationRequest, status: RequestStatus) -> list[RowOp]:
        """Frees a request's row (compacting the batch) or drops it from the queue; returns the
        row operations that compaction takes."""
        ops: list[RowOp] = []
        request.status = status
        if request in self._pending_running:  # its step failed before commit
            self._pending_running.remove(request)
        # Compaction always empties the highest occupied row, whichever request left.
        highest_row = len(self.running) - (self.prefilling is None)
        had_row = request.row >= 0
        if request is self.prefilling:
            self.prefilling = None
        elif request in self.running:
            row = request.row
            last = len(self.running) - 1
            if row != last:
                ops.append(self._relocate(self.running[last], row))
                self.running[row] = self.running[last]
            self.running.pop()
            if self.prefilling is not None:
                ops.append(self._relocate(self.prefilling, len(self.running)))
        else:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
        request.row = -1
        if had_row:
            ops.append(ReleaseRow(highest_row))
        return ops

    def _relocate(self, request: GenerationRequest, row: int) -> MoveRow:
        move = MoveRow(request.row, row, request.cached_tokens)
        request.row = row
        return move
