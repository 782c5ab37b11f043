import asyncio
import threading

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from appliance.engine.runners import open_decoder_runner
from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.sampling import SamplingParams
from appliance.errors import InvalidRequest, QueueFull
from appliance.model_package import open_package

PROMPT = "Where is my order? 我的订单"


def collect(engine, prompt_ids, params):
    async def run():
        return [event async for event in engine.generate(prompt_ids, params)]

    return asyncio.run(run())


def package_engine(models_dir, name):
    path = models_dir / name
    manifest = open_package(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    runner = open_decoder_runner(path, manifest, RuntimeOptions(intra_op_threads=1))
    return GenerationEngine(runner, tokenizer, manifest.eos_token_ids), tokenizer


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_greedy_equals_pytorch_token_for_token(models_dir, sources, name):
    engine, tokenizer = package_engine(models_dir, name)
    try:
        prompt_ids = tokenizer.encode(PROMPT).ids
        events = collect(engine, prompt_ids, SamplingParams(max_tokens=40, ignore_eos=True))
    finally:
        engine.close()
    ours = [t for e in events for t in e.token_ids]
    reference = AutoModelForCausalLM.from_pretrained(sources[name]).eval()
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                      max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert ours == expected[0, len(prompt_ids):].tolist()
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 40 and events[-1].prompt_tokens == len(prompt_ids)
    assert "".join(e.text for e in events) == tokenizer.decode(ours)


def test_seeded_sampling_repeats_and_seeds_differ(models_dir):
    engine, tokenizer = package_engine(models_dir, "llama")
    try:
        ids = tokenizer.encode(PROMPT).ids

        def tokens(seed):
            events = collect(engine, ids, SamplingParams(max_tokens=24, temperature=1.0, seed=seed, ignore_eos=True))
            return [t for e in events for t in e.token_ids]

        assert tokens(11) == tokens(11)
        assert tokens(11) != tokens(12)
    finally:
        engine.close()


def test_prompt_longer_than_the_context_is_refused(models_dir):
    engine, _ = package_engine(models_dir, "llama")
    try:
        with pytest.raises(InvalidRequest, match="prompt: has 300 tokens"):
            engine.submit([5] * 300, SamplingParams(max_tokens=1), lambda e: None)
    finally:
        engine.close()


def test_generation_stops_at_the_context_length(models_dir):
    engine, _ = package_engine(models_dir, "llama")
    try:
        events = collect(engine, [5] * 250, SamplingParams(max_tokens=100, ignore_eos=True))
    finally:
        engine.close()
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 6  # 256 - 250


class FakeRunner:
    """Emits token (step % 7) + 10 forever; can be paused to hold the engine thread."""

    context_length = 1000
    vocab = 32

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.steps = 0

    def _logits(self):
        self.gate.wait(10)
        logits = np.zeros(self.vocab, np.float32)
        logits[(self.steps % 7) + 10] = 1.0
        self.steps += 1
        return logits

    def prefill(self, prompt_ids):
        return self._logits()

    def decode(self, token_id):
        return self._logits()


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i % 26)) for i in ids)

    def encode(self, text):
        raise NotImplementedError


def test_full_queue_refuses_at_once_and_cancel_frees_the_engine():
    runner = FakeRunner()
    engine = GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[], max_queue=2)
    try:
        runner.gate.clear()  # the engine thread blocks inside the first request's prefill
        events = []
        first = engine.submit([1], SamplingParams(max_tokens=1000, ignore_eos=True), events.append)
        assert _wait(lambda: engine._running is first)
        waiting = [engine.submit([1], SamplingParams(max_tokens=5), lambda e: None) for _ in range(2)]
        with pytest.raises(QueueFull):
            engine.submit([1], SamplingParams(max_tokens=5), lambda e: None)
        for request in (first, *waiting):
            request.cancel()
        runner.gate.set()
        assert _wait(lambda: not engine.busy)
        assert events[-1].finish_reason == "cancelled"
        assert events[-1].completion_tokens < 1000
        # The cancelled waiters never ran: the only steps are the first request's (its last
        # logits are computed, then the cancel is seen before a token is chosen).
        assert runner.steps == events[-1].completion_tokens + 1
    finally:
        engine.close()


def test_closing_the_stream_early_cancels_the_request():
    runner = FakeRunner()
    engine = GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[])

    async def take_three():
        stream = engine.generate([1], SamplingParams(max_tokens=100_000, ignore_eos=True))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        return got

    try:
        assert len(asyncio.run(take_three())) == 3
        assert _wait(lambda: not engine.busy)
        assert runner.steps < 100_000
    finally:
        engine.close()


def test_eos_stops_unless_ignored():
    runner = FakeRunner()
    engine = GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[12])
    try:
        stopped = collect(engine, [1], SamplingParams(max_tokens=50))
        assert stopped[-1].finish_reason == "stop"
        assert [t for e in stopped for t in e.token_ids] == [10, 11, 12]
        ignored = collect(engine, [1], SamplingParams(max_tokens=20, ignore_eos=True))
        assert ignored[-1].finish_reason == "length" and ignored[-1].completion_tokens == 20
    finally:
        engine.close()


def _wait(predicate, timeout_s=10.0):
    from tests.conftest import wait_for

    return wait_for(predicate, timeout_s)
