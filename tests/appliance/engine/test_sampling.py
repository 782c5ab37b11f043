import numpy as np
import pytest

from appliance.engine.sampling import SamplingParams, TokenChooser
from appliance.errors import InvalidRequest


@pytest.mark.parametrize("field,kwargs", [
    ("max_tokens", {"max_tokens": 0}),
    ("temperature", {"temperature": -0.5}),
    ("temperature", {"temperature": float("nan")}),
    ("top_k", {"top_k": -1}),
    ("top_p", {"top_p": 1.5}),
])
def test_invalid_params_name_the_field(field, kwargs):
    with pytest.raises(InvalidRequest) as info:
        SamplingParams(**{"max_tokens": 4, **kwargs})
    assert info.value.field == field


def test_greedy_takes_the_argmax():
    logits = np.array([0.1, 3.0, 2.9, -1.0], np.float32)
    assert TokenChooser(SamplingParams(max_tokens=1)).choose(logits) == 1


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32)

    def draw(seed):
        chooser = TokenChooser(SamplingParams(max_tokens=1, temperature=1.0, seed=seed))
        return [chooser.choose(logits) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_k_keeps_only_the_k_most_likely():
    logits = np.arange(100, dtype=np.float32) / 10
    chooser = TokenChooser(SamplingParams(max_tokens=1, temperature=5.0, top_k=3, seed=1))
    assert {chooser.choose(logits) for _ in range(300)} <= {97, 98, 99}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    chooser = TokenChooser(SamplingParams(max_tokens=1, temperature=1.0, top_p=0.75, seed=3))
    draws = {chooser.choose(logits) for _ in range(500)}
    assert draws == {0, 1}


def test_temperature_spreads_the_draws():
    logits = np.array([2.0, 1.0, 0.0], np.float32)
    cold = TokenChooser(SamplingParams(max_tokens=1, temperature=0.05, seed=2))
    hot = TokenChooser(SamplingParams(max_tokens=1, temperature=5.0, seed=2))
    assert {cold.choose(logits) for _ in range(200)} == {0}
    assert len({hot.choose(logits) for _ in range(200)}) == 3
