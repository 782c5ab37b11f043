"""The batch sampler against the per-row sampler it replaced: same tokens, same logprobs, row by row."""

import numpy as np
import pytest

from appliance.engine.batch_sampler import NUCLEUS_HEAD, BatchSampler
from appliance.engine.engine import GenerationEngine
from appliance.engine.output import OutputStage
from appliance.engine.request import GenerationRequest
from appliance.engine.sampling import RequestSampler, SamplingParams, TokenCounts
from appliance.engine.scheduler import SchedulerConfig
from tests.appliance.engine.fakes import FakeRunner, FakeTokenizer
from tests.appliance.engine.row_sampler_reference import TokenChooser
from tests.appliance.engine.streams import collect_many, tokens_of

VOCAB = 1024
# Every parameter alone and mixed: greedy rows with and without penalties and logprobs, and
# sampling rows whose top-k, min-p and top-p cut the vocabulary or not (top-p 0.98 over flat rows
# needs more than NUCLEUS_HEAD candidates).
MIXED = [
    dict(),
    dict(repetition_penalty=1.3, presence_penalty=0.5, logprobs=3),
    dict(temperature=0.8, seed=1),
    dict(temperature=1.2, top_k=40, seed=2),
    dict(temperature=0.9, top_p=0.9, seed=3),
    dict(temperature=1.5, top_p=0.98, seed=4),
    dict(temperature=1.0, min_p=0.05, seed=5, logprobs=0),
    dict(temperature=0.7, top_k=200, top_p=0.8, min_p=0.01, seed=6),
    dict(temperature=2.0, top_k=5, seed=7, frequency_penalty=0.7, logprobs=5),
    dict(temperature=1.1, repetition_penalty=0.8, presence_penalty=-1.0, frequency_penalty=0.3, seed=8),
    dict(temperature=1.0, top_k=VOCAB, seed=9, min_tokens=6, stop_token_ids=(3, 7)),
    dict(logprobs=20, min_tokens=4, stop_token_ids=(0, 1, 2)),
]


def params(**kwargs):
    return SamplingParams(max_tokens=64, **kwargs)


def step_logits(rng, rows, step):
    """[rows, VOCAB] float32: peaked on some steps, flat on others, with ties on every third."""
    logits = rng.normal(scale=4.0 if step % 2 else 0.5, size=(rows, VOCAB)).astype(np.float32)
    return np.round(logits, 1) if step % 3 == 0 else logits


def blocked(p, produced):
    return tuple(sorted(p.stop_token_ids)) if produced < p.min_tokens else ()


def test_a_mixed_batch_draws_the_tokens_and_logprobs_of_the_per_row_sampler():
    mixed = [params(**kwargs) for kwargs in MIXED]
    batch, samplers = BatchSampler(), [RequestSampler(p) for p in mixed]
    references = [TokenChooser(p) for p in mixed]
    rng, nucleus_sizes = np.random.default_rng(0), []
    for step in range(40):
        logits = step_logits(rng, len(mixed), step)
        masks = [blocked(p, step) for p in mixed]
        got = batch.sample(logits, samplers, masks)
        expected = [ref.choose(row, mask) for ref, row, mask in zip(references, logits, masks)]
        assert got == expected, f"step {step}"
        probs = np.exp(logits[5] / 1.5 - (logits[5] / 1.5).max())
        nucleus_sizes.append(int(np.searchsorted(np.cumsum(np.sort(probs / probs.sum())[::-1]), 0.98)))
    assert max(nucleus_sizes) > NUCLEUS_HEAD  # the widening path ran
    assert samplers[1].counts.size > 16  # and the count arrays grew


def test_a_row_draws_the_same_alone_and_in_any_batch():
    rng = np.random.default_rng(1)
    p = params(temperature=0.9, top_p=0.9, top_k=100, seed=11, repetition_penalty=1.2)
    alone, together = RequestSampler(p), RequestSampler(p)
    others = [RequestSampler(params(**kwargs)) for kwargs in MIXED]
    single, batched = BatchSampler(), BatchSampler()
    for step in range(30):
        logits = step_logits(rng, len(others) + 1, step)
        position = step % (len(others) + 1)
        mine = single.sample(logits[position:position + 1], [alone], [()])[0]
        batch = others[:position] + [together] + others[position:]
        assert batched.sample(logits, batch, [()] * len(batch))[position] == mine


def test_penalty_counts_are_kept_per_token_not_recounted():
    counts = TokenCounts()
    for token in [5, 9, 5] + list(range(100, 130)):
        counts.add(token)
    assert counts.size == 32
    assert counts.ids[:3].tolist() == [5, 9, 100] and counts.counts[:3].tolist() == [2.0, 1.0, 1.0]
    assert counts.counts[:counts.size].sum() == 33


def test_blocked_tokens_are_worked_out_once_per_request():
    output = OutputStage(FakeTokenizer(), frozenset({25}), 100)
    request = GenerationRequest("r", [0], params(min_tokens=2, stop_token_ids=(4,)))
    output.open(request)
    assert output.blocked(request) == (4, 25) and output.blocked(request) is output.blocked(request)


class HistoryRunner(FakeRunner):
    """FakeRunner whose logits are random but a function of everything in the row's cache, so a
    token sampled from another row's logits changes every later draw."""

    vocab = 300

    def _logits(self, row):
        return self.history_logits(self.rows[row])

    @classmethod
    def history_logits(cls, history):
        return np.random.default_rng([len(history), *history]).normal(scale=3.0, size=cls.vocab).astype(np.float32)


def reference_tokens(prompt, p):
    """The per-row sampler on HistoryRunner's logits, one request alone."""
    chooser, cache, out = TokenChooser(p), list(prompt), []
    for _ in range(p.max_tokens):
        token = chooser.choose(HistoryRunner.history_logits(cache), blocked(p, len(out))).token_id
        out.append(token)
        cache.append(token)
    return out


@pytest.mark.parametrize("seeded", [dict(temperature=0.9, top_p=0.8, seed=21),
                                    dict(temperature=1.3, top_k=30, min_p=0.02, frequency_penalty=0.5, seed=22)])
def test_a_seeded_request_gives_the_same_tokens_alone_and_batched_with_seven_others(seeded):
    engine = GenerationEngine(HistoryRunner(max_batch=8), FakeTokenizer(), eos_token_ids=[],
                              config=SchedulerConfig(max_batch=8, prefill_chunk=4))
    job = (list(range(5, 15)), SamplingParams(max_tokens=20, ignore_eos=True, **seeded))
    others = [([i + 1] * (1 + i), SamplingParams(max_tokens=10 + 2 * i, ignore_eos=True, **kwargs))
              for i, kwargs in enumerate(MIXED[:7])]
    try:
        alone = tokens_of(collect_many(engine, [job])[0])
        together = tokens_of(collect_many(engine, others[:3] + [job] + others[3:])[3])
    finally:
        engine.close()
    assert together == alone == reference_tokens(*job)
