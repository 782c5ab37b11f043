"""Replicas: one decoder as several engines. Routing over fake engines (most free rows, then
fewest queued prompt tokens), then two real engines through load, drain, reload, the watchdog
and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass

import pytest
from prometheus_client import generate_latest

from appliance.engine.providers import RuntimeOptions
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import ApplianceError, Draining, QueueFull
from appliance.registry import ModelRegistry, ReplicaSet
from appliance.registry.loading import replica_runtime, warm_up
from appliance.server.metrics import Metrics
from tests.appliance.server.test_hot_reload import put_package, slow_down
from tests.conftest import wait_for


@dataclass(frozen=True)
class _Config:
    max_batch: int


class FakeEngine:
    """Streams one event per `release()`; records what was asked of it."""

    def __init__(self, max_batch: int, full: bool = False):
        self.config = _Config(max_batch)
        self.full = full
        self.prompts: list[list[int]] = []
        self.cancelled = 0
        self.gate = asyncio.Event()

    def check_room(self) -> None:
        if self.full:
            raise QueueFull("full")

    async def generate(self, prompt_ids, params, deadline_ns=0):
        self.prompts.append(prompt_ids)
        try:
            await self.gate.wait()
            yield "token"
            await asyncio.Event().wait()  # a stream that runs until its caller closes it
        finally:
            self.cancelled += 1


async def _open(replicas: ReplicaSet, prompt_tokens: int):
    stream = replicas.generate([1] * prompt_tokens, SamplingParams(max_tokens=4))
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0)  # the stream is routed and waits in its engine
    return stream, task


def test_requests_go_to_the_replica_with_most_free_rows_then_fewest_queued_tokens():
    async def scenario():
        a, b = FakeEngine(max_batch=2), FakeEngine(max_batch=2)
        replicas = ReplicaSet([a, b])
        first = await _open(replicas, 100)  # equal: the lowest index
        second = await _open(replicas, 5)  # b has more free rows
        assert (len(a.prompts), len(b.prompts)) == (1, 1)
        # Equal free rows again: the one whose queued prompt is shorter (b, 5 tokens against 100).
        third = await _open(replicas, 7)
        assert (len(a.prompts), len(b.prompts)) == (1, 2)
        assert [(x.in_flight, x.queued_tokens) for x in replicas.loads()] == [(1, 100), (2, 12)]
        a.gate.set()  # a's request has its first token: no longer queued
        assert await first[1] == "token"
        assert replicas.loads()[0].queued_tokens == 0
        fourth = await _open(replicas, 3)  # a has more free rows (1 against 0)
        assert len(a.prompts) == 2
        for stream, task in (first, second, third, fourth):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await stream.aclose()
        # Closing each stream cancelled it in its engine and gave its row back.
        assert (a.cancelled, b.cancelled) == (2, 2)
        assert [(x.in_flight, x.queued_tokens, x.routed) for x in replicas.loads()] == [(0, 0, 2), (0, 0, 2)]

    asyncio.run(scenario())


def test_a_request_is_refused_only_when_every_replica_is_full():
    full, free = FakeEngine(1, full=True), FakeEngine(1)
    ReplicaSet([full, free]).check_room()
    with pytest.raises(QueueFull):
        ReplicaSet([full, FakeEngine(1, full=True)]).check_room()


def test_the_replicas_statistics_add_up_every_field():
    from appliance.engine.engine import EngineStats

    class Counted:
        def __init__(self, stats):
            self._stats = stats

        def stats(self):
            return self._stats

    summed = ReplicaSet([Counted(EngineStats(1, 2, 3, 4, 5)), Counted(EngineStats(10, 20, 30, 40, 50))]).stats()
    assert summed == EngineStats(11, 22, 33, 44, 55)  # admitted too, which the leak checks read


def test_replicas_split_the_cores_only_when_threads_are_left_to_ort():
    assert replica_runtime(RuntimeOptions(intra_op_threads=0), 1).intra_op_threads == 0
    assert replica_runtime(RuntimeOptions(intra_op_threads=3), 2).intra_op_threads == 3
    split = replica_runtime(RuntimeOptions(intra_op_threads=0), 2).intra_op_threads
    assert 1 <= split <= max(1, len(os.sched_getaffinity(0)) // 2)


def test_a_warm_up_that_never_answers_fails_the_load_in_bounded_time():
    class SilentEngine:
        cancelled = False

        def tokenize(self, text):
            return [1]

        def submit(self, ids, params, emit):
            engine = self

            class Request:
                def cancel(self):
                    engine.cancelled = True
            return Request()

    engine = SilentEngine()
    started = time.monotonic()
    with pytest.raises(ApplianceError, match=r"warm-up did not finish within 0.2 s"):
        warm_up(engine, 0.2)
    assert time.monotonic() - started < 5 and engine.cancelled


# ---- two real engines -----------------------------------------------------------------------

@pytest.fixture
def two_replicas(tmp_path, models_dir):
    models = tmp_path / "models"
    models.mkdir()
    put_package(models_dir / "llama", models, "chat")
    registry = ModelRegistry(models, RuntimeOptions(intra_op_threads=1), SchedulerConfig(max_batch=1, max_queue=4),
                             replicas=2)
    registry.load_all()
    yield registry, models
    registry.close()


async def _stream_all(registry: ModelRegistry, count: int, tokens: int = 12) -> list[int]:
    with registry.hold("chat") as model:
        async def one(i):
            events = [e async for e in model.engine.generate([5 + i, 6, 7], SamplingParams(max_tokens=tokens,
                                                                                           ignore_eos=True))]
            return events[-1].completion_tokens
        return await asyncio.gather(*(one(i) for i in range(count)))


def test_two_replicas_share_the_load_and_both_drain(two_replicas):
    registry, _ = two_replicas
    model = registry.get("chat")
    assert len(model.engine.replicas) == 2
    assert model.engine.replicas[0].runner is not model.engine.replicas[1].runner  # own KV cache each
    assert asyncio.run(_stream_all(registry, 4)) == [12] * 4
    assert [load.routed for load in model.engine.loads()] == [2, 2]
    metrics = Metrics()
    metrics.watch_replicas(registry)
    text = generate_latest(metrics.registry).decode()
    assert 'appliance_replica_requests_total{device="cpu",model="chat",replica="1"} 2.0' in text
    registry.stop_admitting()
    for replica in model.engine.replicas:
        with pytest.raises(Draining):
            replica.submit([1], SamplingParams(max_tokens=1), lambda e: None)
    assert not registry.busy()


def test_a_reload_retires_every_replica_after_its_streams_finish(two_replicas, models_dir):
    registry, models = two_replicas
    old = registry.get("chat")
    for replica in old.engine.replicas:
        slow_down(replica, 0.02)

    async def scenario():
        streams = asyncio.ensure_future(_stream_all(registry, 2, tokens=40))
        await asyncio.to_thread(wait_for, lambda: all(s.running for s in old.engine.replica_stats()), 30)
        put_package(models_dir / "qwen2", models, "chat")
        await asyncio.to_thread(registry.reload)
        assert not old.engine.closed  # both streams still run on the old version
        return await streams

    assert asyncio.run(scenario()) == [40, 40]
    assert wait_for(lambda: old.engine.closed, 10)
    new = registry.get("chat")
    assert new is not old and len(new.engine.replicas) == 2 and not new.engine.closed


def test_the_watchdog_names_a_stalled_replica(two_replicas):
    registry, _ = two_replicas
    stuck = registry.get("chat").engine.replicas[1]
    slow_down(stuck, 1.5)
    assert registry.stalled_engines(0.5) == []

    async def scenario():
        with registry.hold("chat") as model:
            model.engine.route(0)  # replica 0 looks busy, so the request goes to replica 1
            events = model.engine.generate([5, 6, 7], SamplingParams(max_tokens=2, ignore_eos=True))
            first = asyncio.ensure_future(events.__anext__())
            stalled = await asyncio.to_thread(wait_for, lambda: registry.stalled_engines(0.5) == ["chat#1"], 10)
            await first
            await events.aclose()
            return stalled

    assert asyncio.run(scenario())
    assert wait_for(lambda: registry.stalled_engines(0.5) == [], 10)
