import numpy as np
import pytest

from appliance.engine.batch_sampler import BatchSampler
from appliance.engine.sampling import RequestSampler, SamplingParams
from appliance.errors import InvalidRequest


def chooser(**params):
    """One request's choose(logits [vocab], blocked) through the batch pass, as a batch of one."""
    sampler, batch = RequestSampler(SamplingParams(max_tokens=1, **params)), BatchSampler()
    return lambda logits, blocked=(): batch.sample(logits[None], [sampler], [blocked])[0]


@pytest.mark.parametrize("field,kwargs", [
    ("max_tokens", {"max_tokens": 0}),
    ("temperature", {"temperature": -0.5}),
    ("temperature", {"temperature": float("nan")}),
    ("top_k", {"top_k": -1}),
    ("top_p", {"top_p": 1.5}),
    ("min_p", {"min_p": -0.1}),
    ("repetition_penalty", {"repetition_penalty": 0.0}),
    ("presence_penalty", {"presence_penalty": 3.0}),
    ("frequency_penalty", {"frequency_penalty": float("inf")}),
    ("stop", {"stop": tuple("abcdefghijklmnopq")}),
    ("stop[1]", {"stop": ("ok", "")}),
    ("min_tokens", {"min_tokens": 5}),
    ("logprobs", {"logprobs": 21}),
])
def test_invalid_params_name_the_field(field, kwargs):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**{"max_tokens": 4, **kwargs})
    assert info.value.field == field


def test_greedy_takes_the_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert chooser()(logits).token_id == 1


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32)

    def draw(seed):
        choose = chooser(temperature=1.0, seed=seed)
        return [choose(logits).token_id for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_keeps_only_the_k_most_likely():
    logits = np.arange(100, dtype=np.float32) / 10
    choose = chooser(temperature=5.0, top_k=3, seed=1)
    assert {choose(logits).token_id for _ in range(300)} <= {97, 98, 99}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    choose = chooser(temperature=1.0, top_p=0.75, seed=3)
    draws = {choose(logits).token_id for _ in range(500)}
    assert draws == {0, 1}


def test_temperature_spreads_the_draws():
    logits = np.array([2.0, 1.0, 0.0], np.float32)
    cold = chooser(temperature=0.05, seed=2)
    hot = chooser(temperature=5.0, seed=2)
    assert {cold(logits).token_id for _ in range(200)} == {0}
    assert len({hot(logits).token_id for _ in range(200)}) == 3


def test_min_p_drops_tokens_far_below_the_best():
    logits = np.log(np.array([0.6, 0.3, 0.05, 0.05], np.float32))
    choose = chooser(temperature=1.0, min_p=0.2, seed=4)
    assert {choose(logits).token_id for _ in range(400)} == {0, 1}


def test_repetition_and_frequency_penalties_steer_away_from_seen_tokens():
    logits = np.array([5.0, 4.9, 1.0], np.float32)
    plain = chooser()
    assert [plain(logits).token_id for _ in range(3)] == [0, 0, 0]
    penalised = chooser(repetition_penalty=1.5)
    assert [penalised(logits).token_id for _ in range(2)] == [0, 1]
    frequency = chooser(frequency_penalty=1.0)
    picks = [frequency(logits).token_id for _ in range(4)]
    assert picks[:2] == [0, 1] and 2 not in picks[:2]


def test_blocked_tokens_are_never_chosen():
    logits = np.array([9.0, 1.0, 0.5], np.float32)
    choose = chooser()
    assert choose(logits, blocked=(0,)).token_id == 1


def test_logprobs_are_the_models_log_softmax():
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    choice = chooser(logprobs=2)(logits)
    expected = logits - np.log(np.exp(logits).sum())
    assert choice.token_id == 0 and np.isclose(choice.logprob, expected[0])
    assert [t for t, _ in choice.top_logprobs] == [0, 1]
    assert np.isclose(choice.top_logprobs[1][1], expected[1])
