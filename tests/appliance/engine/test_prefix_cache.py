"""The prefix cache's logic with fake runners: hits, partial hits, chunk cuts, eviction, pinning,
cancellation between a match and its copy, and budget 0 turning it off."""

import threading
from pathlib import Path

import pytest

from appliance.engine.engine import GenerationEngine
from appliance.engine.prefix_cache import PrefixCache
from appliance.engine.request import GenerationRequest, RequestStatus
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import CopyBlocks, ReleaseRow, Scheduler, SchedulerConfig, StoreBlocks
from tests.appliance.engine.fakes import FakeRunner, FakeTokenizer, expected_tokens
from tests.appliance.engine.streams import collect_many, tokens_of
from tests.conftest import wait_for

BLOCK = 8
SYSTEM = list(range(1, 41))  # 40 tokens: five blocks


class PooledFakeRunner(FakeRunner):
    """FakeRunner with a prefix pool of token lists: a block copied into a wrong place, or a row
    that holds fewer positions than the engine thinks, gives wrong tokens or fails an assert."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.pool = {}
        self.prefills = []  # (row, start, size) of every prefill call

    def allocate_prefix_pool(self, block_tokens, budget_bytes):
        self.block_tokens = block_tokens
        return budget_bytes // 100, 100  # a block "costs" 100 bytes

    def load_blocks(self, slot, blocks, length):
        assert not self.rows[slot], "blocks copied into a row that holds positions"
        assert (len(blocks) - 1) * self.block_tokens < length <= len(blocks) * self.block_tokens
        self.rows[slot] = [t for block in blocks for t in self.pool[block]][:length]

    def store_blocks(self, slot, blocks):
        for block, position in blocks:
            self.pool[block] = self.rows[slot][position : position + self.block_tokens]

    def prefill(self, slot, token_ids, start):
        self.prefills.append((slot, start, len(token_ids)))
        return super().prefill(slot, token_ids, start)


def engine_with_cache(blocks=16, **scheduling):
    runner = PooledFakeRunner(max_batch=4)
    config = SchedulerConfig(max_batch=4, max_step_tokens=64, prefill_chunk=16, prefix_cache_bytes=blocks * 100,
                             prefix_block_tokens=BLOCK, **scheduling)
    return GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[], config=config), runner


def job(prompt, tokens=6):
    return list(prompt), SamplingParams(max_tokens=tokens, ignore_eos=True)


def test_a_repeated_prefix_is_copied_and_only_the_rest_prefilled():
    engine, runner = engine_with_cache()
    try:
        first = SYSTEM + [50, 51, 52]
        assert tokens_of(collect_many(engine, [job(first)])[0]) == expected_tokens(first, 6)
        runner.prefills.clear()
        second = SYSTEM + [60, 61, 62, 63]  # the same 40-token system prompt, a new question
        events = collect_many(engine, [job(second)])[0]
        assert tokens_of(events) == expected_tokens(second, 6) and events[-1].cached_tokens == 40
        # Five blocks copied; the rest prefilled from position 40, cut at the chunk multiple 48.
        assert [(start, size) for _, start, size in runner.prefills] == [(40, 4)]
        stats = engine.prefix_cache_stats()
        assert (stats.lookups, stats.looked_up_tokens, stats.hit_tokens) == (2, 43 + 44, 40)
        assert stats.hit_rate == pytest.approx(40 / 87)
    finally:
        engine.close()


def test_a_partial_hit_copies_the_shared_blocks_and_prefills_in_the_cold_chunks():
    engine, runner = engine_with_cache()
    try:
        collect_many(engine, [job(SYSTEM + [50])])
        runner.prefills.clear()
        diverging = SYSTEM[:20] + [90] * 30  # shares two whole blocks, and half of a third
        assert tokens_of(collect_many(engine, [job(diverging)])[0]) == expected_tokens(diverging, 6)
        # From 16 on, at the cold prompt's cuts: [16, 32), [32, 48), [48, 50).
        assert [(start, size) for _, start, size in runner.prefills] == [(16, 16), (32, 16), (48, 2)]
    finally:
        engine.close()


def test_hits_alone_and_batched_give_the_tokens_of_cold_runs():
    engine, runner = engine_with_cache()
    try:
        collect_many(engine, [job(SYSTEM + [7])])
        jobs = [job(SYSTEM + [100 + i] * (i + 1), 4 + i) for i in range(4)]
        together = collect_many(engine, jobs)
        assert [tokens_of(events) for events in together] == [expected_tokens(p, n.max_tokens) for p, n in jobs]
        # The 41-token prompt gives a block back (a lone last token at 40 is no cold chunk).
        assert engine.prefix_cache_stats().hit_tokens == 32 + 3 * 40
    finally:
        engine.close()


def scheduler_with(cache, prefill_chunk=16):
    return Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=64, prefill_chunk=prefill_chunk), cache)


def cached(prompt, positions, blocks=8):
    cache = PrefixCache(blocks, BLOCK, 100)
    cache.insert(prompt, positions)
    return cache


def admit(scheduler, prompt):
    request = GenerationRequest("r", list(prompt), SamplingParams(max_tokens=4))
    scheduler.add(request)
    return request, scheduler.schedule()


def test_a_one_token_rest_is_left_only_where_the_cold_prompt_ends_in_a_one_token_chunk():
    # 25 tokens, chunks of 16: the cold prompt runs [0, 16) + [16, 25); a 24-token hit would
    # leave a lone token, computed unlike the cold 9-token chunk, so one block is given back.
    prompt = list(range(25))
    request, batch = admit(scheduler_with(cached(prompt, 24)), prompt)
    assert request.prefilled == 16 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(16, 9)]
    # 33 tokens: the cold prompt ends in the lone chunk [32, 33), so the 32-token hit stands.
    prompt = list(range(33))
    request, batch = admit(scheduler_with(cached(prompt, 32)), prompt)
    assert request.prefilled == 32 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(32, 1)]


def test_a_prompt_never_copies_its_last_position():
    prompt = list(range(32))  # all four blocks cached: the logits need position 31 computed
    request, batch = admit(scheduler_with(cached(prompt, 32)), prompt)
    assert request.prefilled == 24 and batch.copies[0].slots == (0, 1, 2)


def test_eviction_takes_the_least_recently_used_leaf_first():
    cache = PrefixCache(4, BLOCK, 100)
    a, b = list(range(100, 124)), list(range(200, 216))
    assert cache.insert(a, 24) == [(0, 0), (1, 8), (2, 16)]
    cache.insert(b, 16)  # one slot free, then A's leaf goes
    assert len(cache.match(a, 3)) == 2 and len(cache.match(b, 2)) == 2
    assert cache.stats().evictions == 1 and cache.stats().held_bytes == 400
    cache.match(a, 3)  # A used last: B's leaf, then B's root, go next
    c = list(range(300, 316))
    cache.insert(c, 16)
    assert len(cache.match(b, 2)) == 0 and len(cache.match(a, 3)) == 2 and len(cache.match(c, 2)) == 2


def test_pinned_blocks_are_never_evicted():
    cache = PrefixCache(2, BLOCK, 100)
    a = list(range(16))
    cache.insert(a, 16)
    cache.pin(cache.match(a, 2))
    assert cache.insert(list(range(50, 66)), 16) == []  # no slot to take
    assert len(cache.match(a, 2)) == 2


def test_a_request_cancelled_between_its_match_and_its_copy_unpins_the_blocks():
    prompt = list(range(40))
    cache = cached(prompt, 32, blocks=4)
    scheduler = scheduler_with(cache)
    request, batch = admit(scheduler, prompt)
    assert batch.copies == [CopyBlocks(request, 0, (0, 1, 2, 3), 32)]
    assert all(block.pins == 1 for block in request.pinned)
    scheduler.finish(request, RequestStatus.FINISHED_CANCELLED)
    assert request.pinned == [] and cache.insert(list(range(500, 508)), 8) == [(3, 0)]  # a leaf evicted


def test_a_completed_prompt_stores_its_new_whole_blocks():
    cache = cached(list(range(16)), 16)
    scheduler = scheduler_with(cache, prefill_chunk=32)
    request, batch = admit(scheduler, list(range(30)))
    assert request.prefilled == 16 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(16, 14)]
    ops = scheduler.commit(batch)
    assert ops == [StoreBlocks(0, ((2, 16),))]  # positions [16, 24); [24, 30) is not a whole block


def test_a_store_that_fails_fails_the_step_and_leaves_no_block_without_its_kv():
    engine, runner = engine_with_cache()
    store, events = runner.store_blocks, []

    def failing_store(slot, blocks):
        raise RuntimeError("copy failed")

    runner.store_blocks = failing_store
    try:
        engine.submit(SYSTEM + [50], SamplingParams(max_tokens=3, ignore_eos=True), events.append)
        assert wait_for(lambda: events and events[-1].finish_reason is not None)
        assert events[-1].finish_reason == "error"
        assert wait_for(lambda: engine.stats().admitted == 0)
        # The cache had indexed the prompt's five blocks before the copy into them failed.
        assert engine.prefix_cache_stats().held_bytes == 0
        runner.store_blocks = store
        runner.prefills.clear()
        assert tokens_of(collect_many(engine, [job(SYSTEM + [60])])[0]) == expected_tokens(SYSTEM + [60], 6)
        assert runner.prefills[0][1] == 0  # a cold prefill, not a hit on blocks that hold nothing
    finally:
        engine.close()


@pytest.mark.parametrize("tokens", [1, 3], ids=["the only token", "a first of three"])
def test_a_prompts_first_token_is_handed_out_before_its_blocks_are_stored(tokens):
    engine, runner = engine_with_cache(cache_generated=True)
    store, order = runner.store_blocks, []

    def recorded_store(slot, blocks):
        order.append("store")
        store(slot, blocks)

    runner.store_blocks = recorded_store
    try:
        engine.submit(SYSTEM + [50], SamplingParams(max_tokens=tokens, ignore_eos=True),
                      lambda event: order.append("token" if event.token_ids else "end"))
        assert wait_for(lambda: engine.stats().admitted == 0)
        assert order[0] == "token" and "store" in order
        runner.prefills.clear()  # the stores did happen: the next question hits (up to the cold chunks' cut)
        assert tokens_of(collect_many(engine, [job(SYSTEM + [60])])[0]) == expected_tokens(SYSTEM + [60], 6)
        assert runner.prefills[0][1] == 32
    finally:
        engine.close()


def test_with_cache_generated_a_finished_history_enters_the_cache():
    engine, runner = engine_with_cache(cache_generated=True)
    try:
        turn = SYSTEM[:20]
        answer = tokens_of(collect_many(engine, [job(turn, 13)])[0])
        # 20 prompt + 12 decoded positions (the last token's KV was never written): four blocks.
        assert engine.prefix_cache_stats().held_bytes == 400
        runner.prefills.clear()
        follow_up = turn + answer + [70, 71]
        assert tokens_of(collect_many(engine, [job(follow_up)])[0]) == expected_tokens(follow_up, 6)
        assert runner.prefills[0][1] == 32
    finally:
        engine.close()


def test_budget_zero_turns_the_cache_off():
    engine, runner = engine_with_cache(blocks=0)
    try:
        collect_many(engine, [job(SYSTEM)])
        collect_many(engine, [job(SYSTEM)])
        assert engine.prefix_cache is None and runner.pool == {}
        assert engine.prefix_cache_stats().lookups == 0 and [s for _, s, _ in runner.prefills] == [0, 16, 32] * 2
    finally:
        engine.close()


def test_a_block_size_that_does_not_divide_the_chunk_is_refused():
    with pytest.raises(ValueError, match="prefix_block_tokens"):
        GenerationEngine(PooledFakeRunner(max_batch=4), FakeTokenizer(), [],
                         SchedulerConfig(max_batch=4, prefill_chunk=16, prefix_cache_bytes=1000,
                                         prefix_block_tokens=12))


def test_the_config_names_a_block_size_that_does_not_divide_the_chunk_or_is_one_token():
    from appliance.errors import ConfigError
    from appliance.server.config import load_config

    with pytest.raises(ConfigError, match=r"engine\.prefix_block_tokens: 48 does not divide prefill_chunk 128"):
        load_config(None, {"engine": {"prefix_block_tokens": 48}})
    with pytest.raises(ConfigError, match=r"engine\.prefix_block_tokens"):
        load_config(None, {"engine": {"prefix_block_tokens": 1}})
    engine = load_config(None).engine
    assert (engine.prefix_cache_mb, engine.prefix_block_tokens, engine.prefix_cache_generated) == (256, 16, False)


class Served:
    """What metrics and GetModel read of a served decoder."""

    def __init__(self, name, engine):
        self.name, self.engine = name, engine

    def entries(self):
        return [self]


def test_metrics_and_get_model_report_the_cache_per_model():
    from appliance.registry.loading import ModelState, ServedModel
    from appliance.registry.replicas import ReplicaSet
    from appliance.server.convert import model_info
    from appliance.server.metrics import Metrics

    engines = [engine_with_cache(blocks=4)[0] for _ in range(2)]
    try:
        collect_many(engines[0], [job(SYSTEM)])
        collect_many(engines[0], [job(SYSTEM)])  # 32 of 40 tokens hit
        replicas = ReplicaSet(engines)
        metrics = Metrics()
        metrics.watch_replicas(Served("support", replicas))
        sample = metrics.registry.get_sample_value
        assert sample("appliance_prefix_cache_capacity_bytes", {"model": "support"}) == 800  # 4 blocks x 2
        assert sample("appliance_prefix_cache_held_bytes", {"model": "support"}) == 400
        assert sample("appliance_prefix_cache_lookups_total", {"model": "support"}) == 2
        assert sample("appliance_prefix_cache_hit_tokens_total", {"model": "support"}) == 32
        assert sample("appliance_prefix_cache_looked_up_tokens_total", {"model": "support"}) == 80
        assert sample("appliance_prefix_cache_evictions_total", {"model": "support"}) == 0
        info = model_info(ServedModel("support", Path("support"), ModelState.READY, engine=replicas)).prefix_cache
        assert (info.capacity_bytes, info.held_bytes, info.lookups) == (800, 400, 2)
        assert info.hit_rate == pytest.approx(0.4)
    finally:
        for engine in engines:
            engine.close()


def test_openai_usage_reports_the_cached_prompt_tokens():
    from appliance.engine.request import TokenEvent
    from appliance.openai_http.replies import usage

    event = TokenEvent((), "", "stop", prompt_tokens=50, completion_tokens=3, cached_tokens=32)
    assert usage(event) == {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53,
                            "prompt_tokens_details": {"cached_tokens": 32}}


def test_a_runner_without_a_pool_serves_with_the_cache_off(caplog):
    caplog.set_level("INFO")
    engine = GenerationEngine(FakeRunner(max_batch=4), FakeTokenizer(), [],
                              SchedulerConfig(max_batch=4, prefill_chunk=16, prefix_cache_bytes=1000,
                                              prefix_block_tokens=BLOCK))
    try:
        assert tokens_of(collect_many(engine, [job(SYSTEM)])[0]) == expected_tokens(SYSTEM, 6)
        assert engine.prefix_cache is None and engine.prefix_cache_stats().capacity_bytes == 0
        assert "keeps no prefix cache" in caplog.text
    finally:
        engine.close()


def test_a_partial_match_finds_the_cached_continuation_with_the_longest_run_of_next_ids():
    cache = PrefixCache(8, BLOCK, 100)
    cache.insert(SYSTEM[:16], 16)
    cache.insert(SYSTEM[:8] + [1, 2, 3, 90, 91, 92, 93, 94], 16)  # a second continuation of block 0
    found = cache.match(SYSTEM[:8] + [9, 10, 11, 12, 13, 70], 2)
    assert len(found) == 1
    block, length = cache.match_partial(SYSTEM[:8] + [9, 10, 11, 12, 13, 70], found, 8)
    assert length == 5 and block.tokens == tuple(SYSTEM[8:16])
    other = cache.match(SYSTEM[:8] + [1, 2, 3, 90, 91, 92, 93, 94], 2)[1]
    assert cache.match_partial(SYSTEM[:8] + [1, 2, 3, 90, 91], found, 3) == (other, 3)  # at most 3 asked
    assert cache.match_partial([99] + SYSTEM[1:8], [], 8) == (None, 0)  # no first block starts with 99
    assert cache.match_partial(SYSTEM[:5], [], 5)[1] == 5  # the root's continuations too


def test_of_equally_long_partial_matches_the_block_stored_last_wins():
    cache = PrefixCache(8, BLOCK, 100)
    for question in ([1, 2, 3, 4], [5, 6, 7, 8]):  # two continuations sharing their first four ids
        cache.insert(SYSTEM[:12] + question, 16)
    found = cache.match(SYSTEM[:12] + [9], 1)
    block, length = cache.match_partial(SYSTEM[:12] + [9], found, 4)
    assert length == 4 and block.tokens == tuple(SYSTEM[8:12] + [5, 6, 7, 8])


def test_an_evicted_block_is_no_partial_match_any_more():
    cache = PrefixCache(2, BLOCK, 100)
    cache.insert(SYSTEM[:8], 8)
    cache.insert(list(range(200, 208)), 8)
    cache.insert(list(range(300, 308)), 8)  # evicts SYSTEM's block, the least recently used
    assert cache.match_partial(SYSTEM[:6], [], 6) == (None, 0)
    assert cache.match_partial(list(range(300, 306)), [], 6)[1] == 6


def quantum_scheduler(cache, quantum, prefill_chunk=16):
    return Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=64, prefill_chunk=prefill_chunk,
                                     hit_quantum=quantum), cache)


def test_with_a_hit_quantum_a_hit_ends_inside_a_block_and_its_rest_runs_as_one_chunk():
    cache = cached(SYSTEM, 40)
    prompt = SYSTEM[:37] + [90] * 9  # 37 ids shared: four whole blocks and five ids of the fifth
    request, batch = admit(quantum_scheduler(cache, 1), prompt)
    assert request.prefilled == 37 and batch.copies[0].length == 37 and len(batch.copies[0].slots) == 5
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(37, 9)]  # across 48, in one run
    # At a quantum of 2 the hit rounds down to 36; at the block size it ends at 32.
    request, batch = admit(quantum_scheduler(cached(SYSTEM, 40), 2), prompt)
    assert request.prefilled == 36 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(36, 10)]
    request, batch = admit(quantum_scheduler(cached(SYSTEM, 40), BLOCK), prompt)
    assert request.prefilled == 32 and len(batch.copies[0].slots) == 4
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(32, 14)]
    # Without the probe's quantum: whole blocks, and the cold prompt's cuts at 48.
    request, batch = admit(scheduler_with(cached(SYSTEM, 40)), prompt)
    assert request.prefilled == 32 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(32, 14)]
    request, batch = admit(scheduler_with(cached(SYSTEM, 40)), SYSTEM + [90] * 10)
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(40, 8)]  # then [48, 50) next step


def test_a_rest_longer_than_a_chunk_is_cut_at_the_cold_multiples_from_the_hit():
    prompt = SYSTEM[:37] + [90] * 30  # 67 tokens: the rest [37, 67) is longer than a chunk
    scheduler = quantum_scheduler(cached(SYSTEM, 40), 1)
    request, batch = admit(scheduler, prompt)
    assert [(c.start, len(c.tokens)) for c in batch.prefills] == [(37, 11)]
    scheduler.commit(batch)
    assert [(c.start, len(c.tokens)) for c in scheduler.schedule().prefills] == [(48, 16)]


def test_with_a_hit_quantum_a_one_token_rest_gives_back_a_quantum_not_a_block():
    prompt = SYSTEM[:25]  # cached whole: a 24-token hit would leave the lone token 24
    request, batch = admit(quantum_scheduler(cached(SYSTEM, 40), 1), prompt)
    assert request.prefilled == 23 and [(c.start, len(c.tokens)) for c in batch.prefills] == [(23, 2)]
    request, batch = admit(quantum_scheduler(cached(SYSTEM, 40), 4), prompt)
    assert request.prefilled == 20 and len(batch.copies[0].slots) == 3


def test_partial_hits_through_the_engine_give_the_tokens_of_cold_runs():
    engine, runner = engine_with_cache(hit_quantum=1)
    try:
        collect_many(engine, [job(SYSTEM + [7])])
        runner.prefills.clear()
        jobs = [job(SYSTEM[: 33 + 2 * i] + [100 + i] * (3 + i), 4 + i) for i in range(4)]
        together = collect_many(engine, jobs)
        assert [tokens_of(events) for events in together] == [expected_tokens(p, n.max_tokens) for p, n in jobs]
        assert sorted(start for _, start, _ in runner.prefills) == [33, 35, 37, 39]  # each rest in one run
        assert engine.prefix_cache_stats().hit_tokens == 33 + 35 + 37 + 39  # the first job's lookup missed
    finally:
        engine.close()


class RowChoosingFakeRunner(PooledFakeRunner):
    """A pooled fake whose idle_row always answers `idle`, and whose decode takes a first row."""

    def __init__(self, idle, **kwargs):
        super().__init__(**kwargs)
        self.idle, self.asked, self.first_rows = idle, [], []

    def idle_row(self, pool_slots):
        self.asked.append(tuple(pool_slots))
        return self.idle

    def decode(self, token_ids, lengths, first_row=0):
        self.first_rows.append(first_row)
        return super().decode(token_ids, lengths, first_row)


def engine_choosing_rows(idle):
    runner = RowChoosingFakeRunner(idle, max_batch=4)
    config = SchedulerConfig(max_batch=4, max_step_tokens=64, prefill_chunk=16, prefix_cache_bytes=1600,
                             prefix_block_tokens=BLOCK)
    return GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[], config=config), runner


def test_a_request_admitted_while_idle_prefills_and_decodes_alone_in_the_runners_row():
    engine, runner = engine_choosing_rows(idle=2)
    try:
        first, second = SYSTEM + [50], SYSTEM + [60, 61]
        assert tokens_of(collect_many(engine, [job(first)])[0]) == expected_tokens(first, 6)
        assert tokens_of(collect_many(engine, [job(second)])[0]) == expected_tokens(second, 6)
        assert runner.asked == [(), tuple(range(5))]  # a miss, then the five cached blocks
        assert {slot for slot, _, _ in runner.prefills} == {2} and set(runner.first_rows) == {2}
        assert all(not row for row in runner.rows)  # row 2 released after each
    finally:
        engine.close()


def test_the_next_request_admitted_moves_the_lone_one_to_row_0_first():
    engine, runner = engine_choosing_rows(idle=3)
    try:
        jobs = [job(SYSTEM + [50], 8), job(SYSTEM + [60, 61], 5), job([9] * 20, 4)]
        runner.gate.clear()  # no step ends before all three are submitted
        results = []
        collecting = threading.Thread(target=lambda: results.append(collect_many(engine, jobs)))
        collecting.start()
        wait_for(lambda: engine.stats().admitted == 3)
        runner.gate.set()
        collecting.join(30)
        assert [tokens_of(events) for events in results[0]] == [expected_tokens(p, s.max_tokens) for p, s in jobs]
        # The first prefilled its three chunks alone in row 3; the next step moved it to row 0
        # before the others joined it in rows 1 and 2, and every decode step ran rows 0.. from then on.
        rows = [slot for slot, _, _ in runner.prefills]
        assert rows[:3] == [3, 3, 3] and set(rows[3:]) == {1, 2}
        assert set(runner.first_rows) == {0} and max(runner.decode_sizes) == 3
    finally:
        engine.close()


def test_a_lone_request_in_another_row_frees_that_row_whenever_it_leaves():
    scheduler = Scheduler(SchedulerConfig(max_batch=4, max_step_tokens=64, prefill_chunk=16),
                          PrefixCache(8, BLOCK, 100), idle_row=lambda slots: 3)
    prompting, batch = admit(scheduler, [5] * 20)  # two chunks: it prefills in row 3 across steps
    for _ in range(2):
        assert [chunk.request.row for chunk in batch.prefills] == [3] and not batch.moves
        scheduler.commit(batch)
        batch = scheduler.schedule()
    assert batch.decode == [prompting] and prompting.row == 3  # it decodes there, alone
    scheduler.commit(batch)
    assert scheduler.finish(prompting, RequestStatus.FINISHED_STOPPED) == [ReleaseRow(3)]
    cancelled, batch = admit(scheduler, [6] * 20)
    scheduler.commit(batch)  # its first chunk: still prefilling in row 3
    assert scheduler.finish(cancelled, RequestStatus.FINISHED_CANCELLED) == [ReleaseRow(3)]
