"""Handing the engine thread's events to their callers: plain callbacks at once, asyncio callers in
one call per event loop per step."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Optional

from appliance.engine.request import GenerationRequest, TokenEvent


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


class Delivery:
    """A caller that is gone (its callback raises, its loop is closed) cancels its request."""

    def __init__(self) -> None:
        # While a step's results are handed out: its LoopSink events, grouped by event loop.
        self._step: Optional[dict[asyncio.AbstractEventLoop, list[tuple[GenerationRequest, TokenEvent]]]] = None

    def begin_step(self) -> None:
        self._step = {}

    def emit(self, request: GenerationRequest, event: TokenEvent) -> None:
        sink = request.emit
        if self._step is not None and isinstance(sink, LoopSink):
            self._step.setdefault(sink.loop, []).append((request, event))
            return
        try:
            sink(event)
        except Exception:
            request.cancel()

    def end_step(self) -> None:
        step, self._step = self._step, None
        for loop, items in (step or {}).items():
            try:
                loop.call_soon_threadsafe(_put_all, [(request.emit.queue, event) for request, event in items])
            except Exception:  # the loop is closed: its callers are gone
                for request, _ in items:
                    request.cancel()
