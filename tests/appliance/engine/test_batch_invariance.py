"""A request's tokens alone and batched: the probe that measures it, and the padding that makes it hold.

MatMulNBits int4 with block 128 at accuracy level 4 (int8 activations) is the package recipe whose
kernels, on this project's machines, compute a lone row (a batch of one, or the odd row out)
differently from rows in a tile; block 32 and fp32 hold without padding here. Which recipe needs
what is a property of the host, so these tests ask the probe rather than assume its answer,
except where they show that the probe and the padding decide the outcome.
"""

import numpy as np
import pytest
from tokenizers import Tokenizer

from appliance.engine.batch_invariance import probe, probe_hit_quantum
from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.model_package import open_package
from tests.appliance.engine.fakes import FakeRunner
from tests.appliance.engine.streams import collect_many

PROMPTS = ["Hi", "Where is my order? 我的订单", "Refund please, the box was broken and the manual missing.",
           "A", "Can I change the delivery address after checkout?", "你好", "Password reset", "Invoice with VAT"]


def open_runner(path, max_batch=8):
    return open_decoder_runner(path, open_package(path), RuntimeOptions(intra_op_threads=1), max_batch=max_batch)


def outputs(events):
    return [t for e in events for t in e.token_ids], [lp[0] for e in events for lp in e.logprobs]


def alone_and_batched(path, runner, temperature, **scheduling):
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    engine = GenerationEngine(runner, tokenizer, open_package(path).eos_token_ids,
                              SchedulerConfig(max_batch=runner.max_batch, **scheduling))
    try:
        # Mixed prompt lengths and output lengths: rows join, leave and move while others run.
        jobs = [(tokenizer.encode(p).ids, SamplingParams(max_tokens=12 + 5 * i, temperature=temperature,
                                                         seed=100 + i, ignore_eos=True, logprobs=0))
                for i, p in enumerate(PROMPTS)]
        alone = [outputs(collect_many(engine, [job])[0]) for job in jobs]
        together = [outputs(events) for events in collect_many(engine, jobs)]
    finally:
        engine.close()
    return alone, together


def test_the_probe_reports_what_it_measured(llama_int4_b128):
    report = probe(open_runner(llama_int4_b128), "always")
    assert report.holds and report.row_quantum in (1, 2, 4)
    assert report.batch_sizes == (2, 3, 4, 5, 8)
    assert len(set(report.prompt_lengths)) > 3
    record = report.as_record()
    assert record["row_quantum"] == report.row_quantum and record["decode_steps"] >= 2


def test_off_pads_nothing_and_says_whether_it_holds(llama_int4_b128):
    runner = open_runner(llama_int4_b128)
    report = probe(runner, "off")
    assert runner.row_quantum == 1 and report.row_quantum == 1
    assert report.holds == (probe(open_runner(llama_int4_b128), "always").row_quantum == 1)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_with_the_probes_padding_tokens_and_logprobs_are_identical_alone_and_batched(llama_int4_b128, temperature):
    runner = open_runner(llama_int4_b128)
    assert probe(runner, "always").holds
    alone, together = alone_and_batched(llama_int4_b128, runner, temperature)
    assert together == alone  # token ids and every logprob, bit for bit
    assert len({tuple(tokens) for tokens, _ in alone}) > 1


def test_padding_decides_the_outcome_where_the_probe_needs_it(llama_int4_b128):
    needed = probe(open_runner(llama_int4_b128), "always").row_quantum
    if needed == 1:
        pytest.skip("block 128 is batch-invariant without padding on this host")
    alone, together = alone_and_batched(llama_int4_b128, open_runner(llama_int4_b128), 0.0)  # no padding
    assert together != alone


def test_spare_rows_never_disturb_a_prompt_being_prefilled_in_chunks(llama_int4_b128):
    """With padding, a decode step's spare row may be the row a long prompt is prefilling in."""
    runner = open_runner(llama_int4_b128)
    runner.set_row_quantum(4)
    alone, together = alone_and_batched(llama_int4_b128, runner, 0.0, prefill_chunk=4, max_step_tokens=16)
    reference_runner = open_runner(llama_int4_b128)
    reference_runner.set_row_quantum(4)
    reference, _ = alone_and_batched(llama_int4_b128, reference_runner, 0.0)
    assert together == alone == reference


def test_a_spare_row_leaves_the_rows_it_pads_with_as_they_were(llama_int4_b128):
    runner = open_runner(llama_int4_b128, max_batch=4)
    runner.set_row_quantum(4)
    runner.prefill(1, [5, 6, 7], 0)  # row 1 holds 3 positions; row 0 decodes alone
    runner.prefill(0, [9, 8], 0)
    kv_before = [row_of(runner, buffer, 1)[:, :3] for buffer in runner._kv]
    runner.decode(np.asarray([4]), np.asarray([2]))
    assert all(np.array_equal(row_of(runner, buffer, 1)[:, :3], before)
               for buffer, before in zip(runner._kv, kv_before))
    assert [row_of(runner, runner._mask, row).sum() for row in range(3)] == [3, 3, 0]


def row_of(runner, buffer, row):
    """A copy of one row of a runner's device buffer, read through its device layer."""
    return runner.device.read(buffer, row * buffer.row_size, buffer.row_size).reshape(buffer.shape[1:]).copy()


def test_the_registry_probes_each_decoder_at_load_and_logs_the_outcome(llama_int4_b128, caplog):
    import logging

    from appliance.registry import ModelRegistry

    caplog.set_level(logging.INFO, logger="appliance.registry")
    registry = ModelRegistry(llama_int4_b128.parent, RuntimeOptions(intra_op_threads=1), SchedulerConfig(max_batch=4),
                             batch_invariance="always")
    try:
        registry.load_all()
        model = registry.get("llama-b128")
        assert model.batch_invariance.holds
        assert model.engine.replicas[0].runner.row_quantum == model.batch_invariance.row_quantum
    finally:
        registry.close()
    assert any("llama-b128: batch invariance on CPUExecutionProvider holds" in r.getMessage() for r in caplog.records)


class TiledFakeRunner(FakeRunner):
    """A runner whose kernels take a chunk's rows in tiles of `tile` and the rows left over through
    another path that rounds differently: a position's logits then depend on where its chunk began."""

    def __init__(self, tile, **kwargs):
        super().__init__(**kwargs)
        self.tile = tile
        self.rounding = [[] for _ in range(self.max_batch)]

    def prefill(self, slot, token_ids, start):
        logits = super().prefill(slot, token_ids, start)
        leftover = len(token_ids) - len(token_ids) % self.tile
        self.rounding[slot] = self.rounding[slot][:start] + [int(i >= leftover) for i in range(len(token_ids))]
        logits[sum(self.rounding[slot]) % 7] += 1.0
        return logits

    def release(self, slot):
        super().release(slot)
        self.rounding[slot] = []


@pytest.mark.parametrize("tile, quantum", [(1, 1), (2, 2), (4, 4), (16, 0)])
def test_the_hit_probe_finds_the_finest_exact_hit_end(tile, quantum):
    # Tiles of 16 with blocks of 8: even a whole-block hit's rest runs through other tiles.
    assert probe_hit_quantum(TiledFakeRunner(tile), chunk=32, block=8)[0] == quantum


def test_the_hit_probe_says_where_the_context_is_too_short():
    assert probe_hit_quantum(FakeRunner(context_length=10), chunk=32, block=8) == \
        (0, "not measured: the context is too short for the probe")


def test_the_registry_probes_hit_ends_when_the_prefix_cache_is_on(llama_int4_b128, caplog):
    import logging

    from appliance.registry import ModelRegistry

    caplog.set_level(logging.INFO, logger="appliance.registry")
    quantum, note = probe_hit_quantum(open_runner(llama_int4_b128, 4), 128, 16)
    for cache_bytes, expected in ((2**24, quantum), (0, 0)):
        registry = ModelRegistry(llama_int4_b128.parent, RuntimeOptions(intra_op_threads=1),
                                 SchedulerConfig(max_batch=4, prefix_cache_bytes=cache_bytes, prefix_block_tokens=16))
        try:
            registry.load_all()
            assert registry.get("llama-b128").engine.replicas[0].config.hit_quantum == expected
        finally:
            registry.close()
    notes = [r.getMessage() for r in caplog.records if "prefix-cache hits" in r.getMessage()]
    assert notes == [f"llama-b128: prefix-cache hits on CPUExecutionProvider: {note}"]


def test_the_config_names_a_bad_batch_invariance_policy(tmp_path):
    from appliance.errors import ConfigError
    from appliance.server.config import load_config

    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="engine.batch_invariance"):
        load_config(None, {"server": {"models": tmp_path / "models"}, "engine": {"batch_invariance": "sometimes"}})


def test_get_model_reports_the_measurement_for_decoders_only(daemon):
    import grpc

    from appliance.v1 import inference_pb2 as pb
    from appliance.v1 import inference_pb2_grpc

    with grpc.insecure_channel(daemon.target) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)
        llama = stub.GetModel(pb.GetModelRequest(name="llama"), timeout=10).model
        minilm = stub.GetModel(pb.GetModelRequest(name="minilm"), timeout=10).model
    assert llama.HasField("batch_invariance")
    assert llama.batch_invariance.row_quantum in (1, 2, 4) and llama.batch_invariance.note
    assert llama.batch_invariance.note.startswith("holds" if llama.batch_invariance.holds else "does not hold")
    assert not minilm.HasField("batch_invariance")
