"""The engine on real packages (tokens equal to PyTorch, alone and batched) and on fakes."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import InvalidRequest, QueueFull
from appliance.model_package import open_package
from tests.appliance.engine.fakes import FakeRunner, FakeTokenizer, expected_tokens
from tests.appliance.engine.streams import collect_many, tokens_of
from tests.conftest import wait_for

PROMPT = "Where is my order? 我的订单"
PROMPTS = ["Hi", "Where is my order? 我的订单", "Refund please, the box was broken and the manual missing.",
           "A", "Can I change the delivery address after checkout?", "你好", "Password reset", "Invoice with VAT"]


def package_engine(models_dir, name, max_batch=8, **config):
    path = models_dir / name
    manifest = open_package(path)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    runner = open_decoder_runner(path, manifest, RuntimeOptions(intra_op_threads=1), max_batch=max_batch)
    scheduling = SchedulerConfig(max_batch=max_batch, **config)
    return GenerationEngine(runner, tokenizer, manifest.eos_token_ids, scheduling), tokenizer


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_greedy_equals_pytorch_token_for_token(models_dir, sources, name):
    engine, tokenizer = package_engine(models_dir, name)
    try:
        prompt_ids = tokenizer.encode(PROMPT).ids
        (events,) = collect_many(engine, [(prompt_ids, SamplingParams(max_tokens=40, ignore_eos=True))])
    finally:
        engine.close()
    reference = AutoModelForCausalLM.from_pretrained(sources[name]).eval()
    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                      max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    assert tokens_of(events) == expected[0, len(prompt_ids):].tolist()
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 40 and events[-1].prompt_tokens == len(prompt_ids)
    assert "".join(e.text for e in events) == tokenizer.decode(tokens_of(events))


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_request_gives_the_same_tokens_alone_and_batched_with_seven_others(models_dir, name, temperature):
    engine, tokenizer = package_engine(models_dir, name)
    try:
        jobs = [(tokenizer.encode(p).ids, SamplingParams(max_tokens=24 + 3 * i, temperature=temperature, seed=100 + i,
                                                         ignore_eos=True)) for i, p in enumerate(PROMPTS)]
        alone = [tokens_of(collect_many(engine, [job])[0]) for job in jobs]
        together = [tokens_of(events) for events in collect_many(engine, jobs)]
    finally:
        engine.close()
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1


def test_chunked_prefill_gives_the_same_tokens(models_dir):
    long_prompt = " ".join(PROMPTS * 3)
    results = []
    for chunk in (4096, 16):
        engine, tokenizer = package_engine(models_dir, "llama", prefill_chunk=chunk)
        try:
            ids = tokenizer.encode(long_prompt).ids
            assert len(ids) > 3 * 16
            results.append(tokens_of(collect_many(engine, [(ids, SamplingParams(max_tokens=16, ignore_eos=True))])[0]))
        finally:
            engine.close()
    assert results[0] == results[1]


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
        (events,) = collect_many(engine, [([5] * 250, SamplingParams(max_tokens=100, ignore_eos=True))])
    finally:
        engine.close()
    assert events[-1].finish_reason == "length"
    assert events[-1].completion_tokens == 6  # 256 - 250


def fake_engine(max_batch=4, max_queue=64, **config):
    runner = FakeRunner(max_batch=max_batch, context_length=10**9)
    scheduling = SchedulerConfig(max_batch=max_batch, max_queue=max_queue, **config)
    return GenerationEngine(runner, FakeTokenizer(), eos_token_ids=[], config=scheduling), runner


def test_requests_join_and_leave_the_batch_at_every_step():
    engine, runner = fake_engine(max_batch=4, prefill_chunk=3, max_step_tokens=8)
    jobs = [([i + 1] * (2 + 3 * i), SamplingParams(max_tokens=5 + 7 * i, ignore_eos=True)) for i in range(10)]

    def open_once_all_are_in():
        # The fake steps take microseconds: without the gate the engine thread could finish a job
        # inside one GIL switch interval, before the next job is submitted, and never share rows.
        wait_for(lambda: engine.stats().admitted == len(jobs))
        runner.gate.set()

    opener = threading.Thread(target=open_once_all_are_in)
    try:
        runner.gate.clear()
        opener.start()
        results = collect_many(engine, jobs)
    finally:
        runner.gate.set()
        opener.join()
        engine.close()
    for (prompt, params), events in zip(jobs, results):
        assert tokens_of(events) == expected_tokens(prompt, params.max_tokens)
    assert max(runner.decode_sizes) == 4  # rows were shared
    assert len(set(runner.decode_sizes)) > 2  # and the batch grew and shrank


def test_full_queue_refuses_at_once_and_cancel_frees_the_slot():
    engine, runner = fake_engine(max_batch=2, max_queue=2)
    try:
        runner.gate.clear()  # hold the engine thread inside a step
        events = {i: [] for i in range(4)}
        requests = [engine.submit([1], SamplingParams(max_tokens=10_000_000, ignore_eos=True), events[i].append)
                    for i in range(4)]  # 2 run, 2 wait
        with pytest.raises(QueueFull):
            engine.submit([1], SamplingParams(max_tokens=5), lambda e: None)
        requests[0].cancel()
        requests[3].cancel()
        runner.gate.set()
        assert wait_for(lambda: engine.stats().running == 2 and engine.stats().waiting == 0)
        assert events[0][-1].finish_reason == "cancelled" and events[3][-1].finish_reason == "cancelled"
        assert events[3][-1].completion_tokens == 0
        for request in requests[1:3]:
            engine.cancel(request)
        assert wait_for(lambda: not engine.busy)
        assert engine.stats().running == 0
    finally:
        engine.close()


def test_closing_the_stream_early_cancels_the_request():
    engine, runner = fake_engine()

    async def take_three():
        stream = engine.generate([1], SamplingParams(max_tokens=10_000_000, ignore_eos=True))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        return got

    try:
        assert len(asyncio.run(take_three())) == 3
        assert wait_for(lambda: not engine.busy)
        steps = runner.steps
        time.sleep(0.2)
        assert runner.steps == steps and engine.stats().running == 0
    finally:
        engine.close()


def test_deadline_finishes_the_request_and_frees_its_row():
    engine, runner = fake_engine()
    try:
        events = []
        engine.submit([1], SamplingParams(max_tokens=10_000_000, ignore_eos=True), events.append,
                      deadline_ns=time.monotonic_ns() + 200_000_000)
        assert wait_for(lambda: events and events[-1].finish_reason is not None, 10)
        assert events[-1].finish_reason == "deadline"
        assert wait_for(lambda: not engine.busy) and engine.stats().running == 0
    finally:
        engine.close()


def test_stop_strings_never_leak_a_partial_match():
    engine, _ = fake_engine()
    try:
        prompt = [1]
        text = FakeTokenizer().decode(expected_tokens(prompt, 30))
        stop = text[7:10]
        (events,) = collect_many(engine, [(prompt, SamplingParams(max_tokens=30, stop=(stop,)))])
    finally:
        engine.close()
    streamed = "".join(e.text for e in events)
    assert streamed == text[: text.find(stop)]
    assert events[-1].finish_reason == "stop"


def blocked_reference(prompt, stop_id, min_tokens, max_tokens):
    """FakeRunner's tokens where stop_id may not be chosen before min_tokens: a blocked winner
    leaves all-zero logits, whose argmax is token 0; the first stop_id after that ends the run."""
    cache, out = list(prompt), []
    while len(out) < max_tokens:
        token = (sum(cache) + len(cache)) % 7 + 10
        token = 0 if token == stop_id and len(out) < min_tokens else token
        out.append(token)
        cache.append(token)
        if token == stop_id:
            break
    return out


def test_stop_token_ids_and_min_tokens():
    engine, _ = fake_engine()
    try:
        prompt = [1]
        natural = expected_tokens(prompt, 20)
        stop_id = natural[2]
        (stopped,) = collect_many(engine, [(prompt, SamplingParams(max_tokens=20, stop_token_ids=(stop_id,)))])
        assert tokens_of(stopped) == natural[:3] and stopped[-1].finish_reason == "stop"
        # This stop token comes back every other token once blocked, so a block that lifts a
        # token early or late shows as a different length.
        stop_id = natural[1]
        params = SamplingParams(max_tokens=20, stop_token_ids=(stop_id,), min_tokens=10)
        (held,) = collect_many(engine, [(prompt, params)])
        expected = blocked_reference(prompt, stop_id, min_tokens=10, max_tokens=20)
        assert tokens_of(held) == expected and len(expected) == 12 and held[-1].finish_reason == "stop"
    finally:
        engine.close()


def test_logprobs_come_with_each_token():
    engine, _ = fake_engine()
    try:
        (events,) = collect_many(engine, [([1], SamplingParams(max_tokens=5, logprobs=3, ignore_eos=True))])
    finally:
        engine.close()
    per_token = [lp for e in events for lp in e.logprobs]
    assert len(per_token) == 5
    # FakeRunner's logits are one-hot (1 for its token, 0 for the other 31 of 32): log-softmax by hand.
    chosen, other = 1 - np.log(np.e + FakeRunner.vocab - 1), -np.log(np.e + FakeRunner.vocab - 1)
    for (logprob, top), token in zip(per_token, tokens_of(events)):
        assert np.isclose(logprob, chosen, atol=1e-5) and top[0] == (token, pytest.approx(chosen, abs=1e-5))
        assert [lp for _, lp in top[1:]] == pytest.approx([other, other], abs=1e-5)
