"""Cache hits never change tokens, on real tiny packages: greedy and seeded requests behind a shared
prefix give the same token ids and logprobs with the prefix cache as without it, alone and
batched, on an fp32 and an int4 package (and one that prefills on an int8 graph), with
whole-block hits and with the hits that the probe allows (ending inside a block, the rest in one
chunk). And the packages' chat templates render turn N's prompt as a token prefix of turn N+1's,
so a conversation's history hits."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from appliance.engine.batch_invariance import probe_hit_quantum
from appliance.engine.chat import ChatMessage
from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.model_package import open_package
from tests.appliance.engine.package_chat import tokenizer_and_template
from tests.appliance.engine.streams import collect_many

CHUNK, BLOCK = 32, 8


def engine_for(path, prefix_cache_bytes, probe_hits=False):
    manifest = open_package(path)
    runner = open_decoder_runner(path, manifest, RuntimeOptions(intra_op_threads=1), max_batch=4)
    quantum = probe_hit_quantum(runner, CHUNK, BLOCK)[0] if probe_hits else 0
    assert quantum or not probe_hits, "the probe found no exact hit end on this host"
    config = SchedulerConfig(max_batch=4, max_step_tokens=2 * CHUNK, prefill_chunk=CHUNK,
                             prefix_cache_bytes=prefix_cache_bytes, prefix_block_tokens=BLOCK, hit_quantum=quantum)
    return GenerationEngine(runner, Tokenizer.from_file(str(path / "tokenizer.json")), manifest.eos_token_ids, config)


def jobs_behind_a_shared_prefix(vocab):
    rng = np.random.default_rng(7)
    shared = [int(t) for t in rng.integers(10, vocab - 10, 70)]
    # Rests after the shared 70 tokens: a hit of 64 leaves 1 + rest; lengths 65 (= 64 + 1, a lone
    # token the cold prompt also ends in) and 57 (56 + 1, where a block is given back) included.
    # Hits ending inside a block where the probe allows them: 61 shared ids and a rest across 64,
    # 67 and a short rest, and the first prompt again (whole but its last token cached).
    tails = [[int(t) for t in rng.integers(10, vocab - 10, n)] for n in (5, 1, 30, 9, 4)]
    prompts = [shared + tail for tail in tails[:3]] + [shared[:65], shared[:57], shared[:61] + tails[3],
                                                        shared[:67] + tails[4], shared + tails[0]]
    return [(p, SamplingParams(max_tokens=8, temperature=0.0 if i % 2 else 0.9, seed=40 + i, ignore_eos=True,
                               logprobs=0))
            for i, p in enumerate(prompts)]


def outputs(events):
    return [t for e in events for t in e.token_ids], [lp[0] for e in events for lp in e.logprobs]


PACKAGES = {"int4": "llama_int4", "int4 + int8 prefill graph": "llama_int4_prefill_int8"}


@pytest.mark.parametrize("hits", ["whole blocks", "probed"])
@pytest.mark.parametrize("package", ["fp32", "int4", "int4 + int8 prefill graph"])
def test_hits_give_the_tokens_and_logprobs_of_cold_prefills(package, hits, models_dir, request):
    path = models_dir / "llama" if package == "fp32" else request.getfixturevalue(PACKAGES[package])
    jobs = jobs_behind_a_shared_prefix(open_package(path).vocab_size)
    cold = engine_for(path, 0)
    try:
        expected = [outputs(collect_many(cold, [job])[0]) for job in jobs]
    finally:
        cold.close()
    cached = engine_for(path, 10**7, probe_hits=hits == "probed")
    try:
        collect_many(cached, [jobs[0]])  # the shared prefix enters the cache
        alone = [outputs(collect_many(cached, [job])[0]) for job in jobs]
        batched = [outputs(events) for events in collect_many(cached, jobs)]
        stats = cached.prefix_cache_stats()
    finally:
        cached.close()
    assert alone == expected and batched == expected
    assert stats.hit_tokens >= len(jobs) * 48  # every lookup after the first hit most of its prefix


def one_at_a_time_cold_and_cached(path, jobs):
    """(outputs without the cache, outputs with it, its stats, blocks the runner did not copy),
    each job run alone in turn."""
    cold = engine_for(path, 0)
    try:
        expected = [outputs(collect_many(cold, [job])[0]) for job in jobs]
    finally:
        cold.close()
    cached = engine_for(path, 10**7)
    try:
        got = [outputs(collect_many(cached, [job])[0]) for job in jobs]
        return expected, got, cached.prefix_cache_stats(), cached.runner.blocks_not_copied
    finally:
        cached.close()


def test_a_prefix_met_again_after_another_ran_is_found_in_its_own_row_and_not_copied(models_dir):
    """Two prefixes in turn, one request at a time: each is admitted to the row its prefix's last
    request left (idle_row), so no hit copies a block, and the tokens are still the cold ones."""
    path = models_dir / "llama"
    vocab = open_package(path).vocab_size
    rng = np.random.default_rng(3)
    shared, other = ([int(t) for t in rng.integers(10, vocab - 10, 64)] for _ in range(2))
    jobs = [(prefix + [int(t) for t in rng.integers(10, vocab - 10, 5)],
             SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)) for prefix in (shared, other) * 3]
    expected, got, stats, not_copied = one_at_a_time_cold_and_cached(path, jobs)
    assert got == expected
    assert stats.hit_tokens == 4 * 64 and not_copied == 4 * 64 // BLOCK  # the last four hit, in place


def test_a_prefix_that_shares_only_its_first_block_with_a_seen_one_runs_elsewhere_and_leaves_it_in_place(models_dir):
    """A support bot's traffic: questions behind one system prompt, and between them requests behind
    other ones that share only the chat template's opening block with it, more of them than there
    are rows. Each goes to a row that held nothing, then to the row written least recently, never
    to the system prompt's row for that one block, so every later question behind the system
    prompt copies none of its blocks."""
    path = models_dir / "llama"
    vocab = open_package(path).vocab_size
    rng = np.random.default_rng(4)

    def ids(n):
        return [int(t) for t in rng.integers(10, vocab - 10, n)]

    opening = ids(BLOCK)
    system, others = opening + ids(56), [opening + ids(56) for _ in range(5)]  # 5 others, 4 rows
    prompts = [system + ids(5)]
    for other in others:
        prompts += [other + ids(5), system + ids(5)]
    jobs = [(p, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)) for p in prompts]
    expected, got, _, not_copied = one_at_a_time_cold_and_cached(path, jobs)
    assert got == expected
    # The system prompt's later five questions find all 8 of its blocks in place. Three others take
    # the empty rows and copy their opening block; the last two take the rows of the first two,
    # where that block still is.
    assert not_copied == 5 * len(system) // BLOCK + 2


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_chat_templates_render_each_turn_as_a_token_prefix_of_the_next(model, models_dir):
    tokenizer, template = tokenizer_and_template(models_dir / model)
    history = [ChatMessage("system", "You answer questions about parcels. Be brief."),
               ChatMessage("user", "Where is my order 4417?")]
    replies = ["It left the depot today.", "您的包裹明天到达。"]
    for reply, question in zip(replies, ["Can it go to my office instead?", "谢谢!"]):
        before = tokenizer.encode(template.render(history)).ids
        history += [ChatMessage("assistant", reply), ChatMessage("user", question)]
        after = tokenizer.encode(template.render(history)).ids
        assert after[: len(before)] == before
