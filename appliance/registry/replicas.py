"""One decoder's engines (replicas), each with its own KV cache and threads, behind one front.

A request goes to the replica with the most free rows; between equals, to the one with the
fewest prompt tokens still waiting for their first token; then to the lowest index. The counts
are the set's own, taken under one lock as the request is routed: an engine's own statistics
are updated on its thread later, so two requests routed at once would both see the same
replica as free. Drain, close, busy and the watchdog's heartbeats cover every replica.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from appliance.engine.engine import EngineStats, GenerationEngine
from appliance.engine.prefix_cache import PrefixCacheStats
from appliance.engine.request import TokenEvent
from appliance.engine.sampling import SamplingParams
from appliance.errors import QueueFull


@dataclass
class ReplicaLoad:
    """What the set has routed to one replica (guarded by the set's lock)."""

    in_flight: int = 0  # routed and not finished
    queued_tokens: int = 0  # prompt tokens of in-flight requests that have had no event yet
    routed: int = 0  # every request routed here since the model loaded


class ReplicaSet:
    def __init__(self, engines: Sequence[GenerationEngine], devices: Sequence[str] = ()):
        if not engines:
            raise ValueError("a replica set needs at least one engine")
        self.replicas = tuple(engines)
        # Where each replica computes ("cpu", "cuda:N"), for metrics; "" where not known.
        self.devices = tuple(devices) or ("",) * len(self.replicas)
        self._loads = [ReplicaLoad() for _ in self.replicas]
        self._lock = threading.Lock()
        self.closed = False

    @property
    def context_length(self) -> int:
        return self.replicas[0].context_length

    def tokenize(self, prompt: str) -> list[int]:
        return self.replicas[0].tokenize(prompt)  # every replica has the same tokenizer

    def route(self, prompt_tokens: int) -> int:
        """The replica the next request goes to; counted as in flight there until `left`."""
        with self._lock:
            index = max(range(len(self.replicas)), key=self._preference)
            load = self._loads[index]
            load.in_flight += 1
            load.queued_tokens += prompt_tokens
            load.routed += 1
        return index

    def _preference(self, index: int) -> tuple[int, int, int]:
        load = self._loads[index]
        free_rows = self.replicas[index].config.max_batch - load.in_flight  # negative: requests wait
        return free_rows, -load.queued_tokens, -index

    def _started(self, index: int, prompt_tokens: int) -> None:
        with self._lock:
            self._loads[index].queued_tokens -= prompt_tokens

    def _left(self, index: int, prompt_tokens: int, started: bool) -> None:
        with self._lock:
            load = self._loads[index]
            load.in_flight -= 1
            if not started:
                load.queued_tokens -= prompt_tokens

    def check_room(self) -> None:
        """QueueFull now only if every replica would refuse a request submitted now."""
        refusal: QueueFull | None = None
        for engine in self.replicas:
            try:
                engine.check_room()
                return
            except QueueFull as exc:
                refusal = exc
        raise refusal

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       deadline_ns: int = 0) -> AsyncIterator[TokenEvent]:
        """Streams the request's events from the replica it is routed to; closing the iterator
        early cancels the request there."""
        index = self.route(len(prompt_ids))
        started = False
        try:
            async with contextlib.aclosing(self.replicas[index].generate(prompt_ids, params, deadline_ns)) as events:
                async for event in events:
                    if not started:
                        started = True
                        self._started(index, len(prompt_ids))
                    yield event
        finally:
            self._left(index, len(prompt_ids), started)

    def loads(self) -> list[ReplicaLoad]:
        """A copy of what each replica holds, for metrics and tests."""
        with self._lock:
            return [ReplicaLoad(load.in_flight, load.queued_tokens, load.routed) for load in self._loads]

    def stats(self) -> EngineStats:
        """The replicas' statistics summed, as one engine's would read."""
        each = [engine.stats() for engine in self.replicas]
        return EngineStats(sum(s.waiting for s in each), sum(s.running for s in each),
                           sum(s.prefilling for s in each), sum(s.max_batch for s in each),
                           sum(s.admitted for s in each))

    def prefix_cache_stats(self) -> PrefixCacheStats:
        """The replicas' prefix caches summed (each replica has its own)."""
        return sum((engine.prefix_cache_stats() for engine in self.replicas), PrefixCacheStats())

    def replica_stats(self) -> list[EngineStats]:
        return [engine.stats() for engine in self.replicas]

    def heartbeats(self) -> list[float]:
        """Monotonic time each replica's thread last went round its loop."""
        return [engine.heartbeat for engine in self.replicas]

    @property
    def busy(self) -> bool:
        return any(engine.busy for engine in self.replicas)

    def stop_admitting(self) -> None:
        for engine in self.replicas:
            engine.stop_admitting()

    def close(self, timeout_s: float = 5.0) -> None:
        self.closed = True
        for engine in self.replicas:
            engine.close(timeout_s)
