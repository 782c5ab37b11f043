"""Replaying a workload against a contender, timed by the client side of it.

Two drivers apply the same arrivals and record the same figures: `replay_streams` for a server
reached by asyncio streams (the daemon over gRPC), `replay_steps` for an in-process engine that
is stepped in a loop (the onnxruntime-genai Engine, OpenVINO GenAI's ContinuousBatchingPipeline),
which have no server of their own. A request's clock starts at its scheduled send time (its
conversation's arrival, or the previous answer's end plus think time), so a driver that is busy
stepping does not hide queueing.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from typing import AsyncIterator, Callable, Protocol

from .stats import RequestRecord
from .workload import Workload, history

Messages = list[tuple[str, str]]


async def replay_streams(workload: Workload,
                         send: Callable[[Messages, int], AsyncIterator[tuple[int, str]]]) -> list[RequestRecord]:
    """`send(messages, max_tokens)` streams (token count, text) chunks of one answer."""
    records: list[RequestRecord] = []
    start = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - start

    async def conversation(conv):
        await asyncio.sleep(max(0.0, conv.start_s - now()))
        answers: list[str] = []
        sent = conv.start_s
        for turn_index, turn in enumerate(conv.turns):
            record = RequestRecord(conv.index, turn_index, sent)
            records.append(record)
            text = []
            try:
                async for count, piece in send(history(workload.system, conv.turns, answers), turn.answer_tokens):
                    record.token_arrived(now(), count)
                    text.append(piece)
            except Exception as exc:  # the report counts failures; one failure ends its conversation
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                record.error = type(exc).__name__ + (f" {code.name}" if code is not None else "")
                return
            answers.append("".join(text))
            await asyncio.sleep(workload.spec.think_s)
            sent = now()

    await asyncio.gather(*(conversation(c) for c in workload.conversations))
    return records


class SteppedEngine(Protocol):
    def add(self, key: int, token_ids: list[int], max_tokens: int) -> None: ...

    def step(self) -> list[tuple[int, list[int], bool]]:
        """One engine step: (key, new token ids, finished) for each request that moved."""

    def busy(self) -> bool: ...


def replay_steps(workload: Workload, engine: SteppedEngine, render: Callable[[Messages], list[int]],
                 decode: Callable[[list[int]], str]) -> list[RequestRecord]:
    """The same arrivals through an engine stepped in this thread: due requests are added before
    each step; with nothing to run, the loop waits for the next due request."""
    records: list[RequestRecord] = []
    due: list[tuple[float, int, int]] = [(c.start_s, c.index, 0) for c in workload.conversations]
    heapq.heapify(due)
    answers: dict[int, list[str]] = {c.index: [] for c in workload.conversations}
    produced: dict[int, list[int]] = {}
    running: dict[int, RequestRecord] = {}
    start = time.perf_counter()
    while due or running:
        now = time.perf_counter() - start
        while due and due[0][0] <= now:
            sent, index, turn_index = heapq.heappop(due)
            conv = workload.conversations[index]
            record = RequestRecord(index, turn_index, sent)
            records.append(record)
            key = index * 16 + turn_index
            running[key], produced[key] = record, []
            engine.add(key, render(history(workload.system, conv.turns, answers[index])),
                       conv.turns[turn_index].answer_tokens)
        if not engine.busy():
            if not due:  # the engine dropped what it had: count those as failed, not hang
                for record in running.values():
                    record.error = "dropped"
                break
            time.sleep(max(0.0, due[0][0] - (time.perf_counter() - start)))
            continue
        for key, ids, finished in engine.step():
            record = running[key]
            record.token_arrived(time.perf_counter() - start, len(ids))
            produced[key] += ids
            if finished:
                del running[key]
                index, turn_index = divmod(key, 16)
                answers[index].append(decode(produced.pop(key)))
                if turn_index + 1 < len(workload.conversations[index].turns):
                    heapq.heappush(due, (record.done_s + workload.spec.think_s, index, turn_index + 1))
    return records
