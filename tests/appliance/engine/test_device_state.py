"""The runner's state lives on the session's device: what crosses between host and device, counted
by the device layer, and row moves that never leave the device.

On this host the device is the CPU; FakeDevice stands for one whose memory the host cannot read in
place (its reads are copies, as a GPU's are), so the runner's results cannot rest on host views.
"""

import ctypes
import dataclasses

import numpy as np
import pytest

from appliance.engine.device_buffers import ON_DEVICE, TO_DEVICE, TO_HOST, CpuDevice, CudaDevice
from appliance.engine.providers import RuntimeOptions
from appliance.engine.shared_kv_runner import SharedKVRunner
from appliance.errors import PackageError
from appliance.model_package import open_package


class FakeDevice(CpuDevice):
    ort_device = "cpu"

    def read(self, buffer, offset, count):
        return super().read(buffer, offset, count).copy()


def open_runner(models_dir, device=None, **runtime):
    path = models_dir / "llama"
    return SharedKVRunner(path, open_package(path), RuntimeOptions(intra_op_threads=1, **runtime), max_batch=4,
                          device=device)


PROMPTS = [[5, 17, 42, 9], [7, 8], [11, 12, 13, 14, 15, 16]]


def fill(runner):
    """Prefills PROMPTS into rows 0..2; returns their lengths."""
    for row, prompt in enumerate(PROMPTS):
        runner.prefill(row, prompt, 0)
    return np.asarray([len(p) for p in PROMPTS], np.int64)


def test_a_decode_step_moves_only_ids_mask_entries_and_logits(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    lengths = fill(runner)
    tokens = np.asarray([3, 4, 5], np.int64)
    runner.decode(tokens, lengths)  # binds the 3-row step once
    graph_names = {i.name for i in runner.session.get_inputs()} | {o.name for o in runner.session.get_outputs()}
    assert set(device.bound) == graph_names  # every input and output is a device buffer, bound by pointer
    device.traffic.clear()
    device.bound.clear()
    logits = runner.decode(tokens, lengths + 1)
    vocab, n = runner.vocab_size, len(tokens)
    assert dict(device.traffic) == {(TO_DEVICE, "input_ids"): n * 8, (TO_DEVICE, "attention_mask"): n * 8,
                                    (TO_HOST, "logits"): n * vocab * 4}
    assert not device.bound  # the bindings of a batch size are made once
    reference = open_runner(models_dir)  # the plain CPU device: same logits
    fill(reference)
    reference.decode(tokens, lengths)
    assert np.array_equal(reference.decode(tokens, lengths + 1), logits)


def test_prefill_reads_back_only_the_last_positions_logits(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    runner.prefill(0, PROMPTS[0][:2], 0)
    device.traffic.clear()
    last = runner.prefill(0, PROMPTS[0][2:], 2)  # a second chunk
    assert dict(device.traffic) == {(TO_DEVICE, "input_ids"): 2 * 8, (TO_DEVICE, "attention_mask"): 2 * 8,
                                    (TO_HOST, "logits"): runner.vocab_size * 4}
    whole = open_runner(models_dir)
    assert np.allclose(whole.prefill(0, PROMPTS[0], 0), last, atol=1e-4)


def test_a_row_move_copies_only_valid_positions_on_the_device(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    lengths = fill(runner)
    device.traffic.clear()
    runner.move(2, 0, int(lengths[2]))  # row 0 (4 positions) takes row 2's 6
    runner.release(2)
    layout = runner.layout
    kv_bytes = 2 * layout.num_layers * layout.num_kv_heads * int(lengths[2]) * layout.head_dim * 4
    assert not any(direction != ON_DEVICE for direction, _ in device.traffic)  # no host round trip
    assert device.traffic[ON_DEVICE, "kv"] == kv_bytes
    # The mask: row 2's 6 entries copied, then row 2's 6 cleared on release.
    assert device.traffic[ON_DEVICE, "attention_mask"] == (6 + 6) * 8
    moved = runner.decode(np.asarray([3, 4]), np.asarray([lengths[2], lengths[1]]))
    reference = open_runner(models_dir)
    fill(reference)
    in_place = reference.decode(np.asarray([3, 4, 3]), lengths)
    assert np.array_equal(moved[0], in_place[2]) and np.array_equal(moved[1], in_place[1])


def test_a_shorter_row_moved_over_a_longer_one_leaves_no_stale_mask(models_dir):
    runner = open_runner(models_dir)
    lengths = fill(runner)
    runner.move(1, 2, int(lengths[1]))  # 2 positions over 6
    mask = runner.device.read(runner._mask, 2 * runner._mask.row_size, runner._mask.row_size)
    assert mask.sum() == 2 and mask[:2].all()


def through_the_pool(runner):
    """A prompt prefilled in row 0 as [0, 24) + [24, 28); its first 24 positions stored as three
    prefix-cache blocks in pool slots 2, 0, 1 (a lone block, then a run of two copied at once) and
    copied into row 3, which prefills [24, 28) itself: returns both rows' last logits."""
    prompt = list(range(30, 58))
    runner.allocate_prefix_pool(8, 10**6)
    runner.prefill(0, prompt[:24], 0)
    cold = runner.prefill(0, prompt[24:], 24)
    runner.store_blocks(0, ((2, 0), (0, 8), (1, 16)))
    runner.load_blocks(3, (2, 0, 1), 24)
    return [cold, runner.prefill(3, prompt[24:], 24)]


def test_a_prefix_cache_hit_copies_kv_only_on_the_device_and_computes_the_cold_logits(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    runner.allocate_prefix_pool(8, 10**6)
    runner.prefill(0, list(range(30, 46)), 0)
    device.traffic.clear()
    runner.store_blocks(0, ((1, 0), (0, 8)))
    runner.load_blocks(3, (1, 0), 16)
    layout = runner.layout
    kv_bytes = 2 * layout.num_layers * layout.num_kv_heads * 16 * layout.head_dim * 4  # 16 positions
    assert dict(device.traffic) == {(ON_DEVICE, "prefix_cache"): kv_bytes, (ON_DEVICE, "kv"): kv_bytes,
                                    (TO_DEVICE, "attention_mask"): 16 * 8}  # the hit row's mask ones
    cold, hit = through_the_pool(open_runner(models_dir, device=FakeDevice()))
    assert np.array_equal(cold, hit)


def block_bytes(runner, block_tokens=8):
    """Bytes of one prefix-cache block: K and V of every layer, fp32."""
    layout = runner.layout
    return 2 * layout.num_layers * layout.num_kv_heads * block_tokens * layout.head_dim * 4


def test_a_hit_on_a_row_that_still_holds_its_blocks_copies_nothing_and_computes_the_cold_logits(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    cold, _ = through_the_pool(runner)  # row 0 stored the blocks; row 3 loaded them
    rest = list(range(30, 58))[24:]
    for row in (0, 3):  # the next request with the same prefix, in either row
        runner.release(row)
        device.traffic.clear()
        skipped = runner.blocks_not_copied
        runner.load_blocks(row, (2, 0, 1), 24)
        assert device.traffic[ON_DEVICE, "kv"] == 0 and runner.blocks_not_copied - skipped == 3
        assert np.array_equal(runner.prefill(row, rest, 24), cold)


def test_a_row_copies_again_the_blocks_written_since_it_held_them(models_dir):
    """A prefill over a block's positions, a decode step into one and a pool block stored anew
    from another row each end a row's claim to that block: only those are copied again, and the
    logits are still the cold prompt's."""
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    cold, _ = through_the_pool(runner)
    prompt, other = list(range(30, 58)), [99] * 24
    runner.release(0)
    runner.prefill(3, other[:1], 8)  # row 3 rewrites position 8: pool slot 0's block there
    runner.decode(np.asarray([7, 7, 7, 7]), np.asarray([0, 0, 0, 9]))  # row 0 writes position 0 (slot 2's)
    for row in (0, 3):
        runner.release(row)
        device.traffic.clear()
        runner.load_blocks(row, (2, 0, 1), 24)
        assert device.traffic[ON_DEVICE, "kv"] == block_bytes(runner)  # the one block written since
        assert np.array_equal(runner.prefill(row, prompt[24:], 24), cold)
    runner.prefill(1, other, 0)
    runner.store_blocks(1, ((2, 0),))  # pool slot 2 now holds row 1's first block, not the prompt's
    runner.release(3)
    device.traffic.clear()
    runner.load_blocks(3, (2, 0, 1), 24)
    assert device.traffic[ON_DEVICE, "kv"] == block_bytes(runner)


def test_a_moved_row_takes_the_blocks_its_source_held_with_it(models_dir):
    device = FakeDevice()
    runner = open_runner(models_dir, device=device)
    cold, _ = through_the_pool(runner)
    runner.move(0, 2, 20)  # [0, 20): the blocks at 0 and 8 whole, the one at 16 in part
    runner.release(0)
    runner.release(2)
    device.traffic.clear()
    runner.load_blocks(2, (2, 0, 1), 24)
    assert device.traffic[ON_DEVICE, "kv"] == block_bytes(runner)  # only the block at 16
    assert np.array_equal(runner.prefill(2, list(range(30, 58))[24:], 24), cold)


def test_a_large_batch_of_copies_split_over_two_threads_lands_where_one_thread_puts_it(models_dir, monkeypatch):
    """Loads, stores and row moves as copy_all batches: split over a second thread, every KV byte
    still lands where it would from one thread, and the traffic is counted once."""
    monkeypatch.setattr(CpuDevice, "PARALLEL_COPY_ELEMENTS", 0)  # split even the tiny model's copies
    results = []
    for threads in (1, 2):
        device = CpuDevice(threads)
        runner = open_runner(models_dir, device=device)
        logits = through_the_pool(runner)
        runner.move(3, 1, 28)
        # What was written: 28 positions of rows 0, 1 and 3, and pool slots 0-2 (the rest is
        # whatever the allocator left there).
        rows = [kv.host.reshape(kv.shape)[[0, 1, 3], :, :28].copy() for kv in runner._kv]
        pool = [block.host.reshape(block.shape)[:, :24].copy() for block in runner._pool]
        results.append((logits, rows, pool, dict(device.traffic)))
    (one, two) = results
    assert all(np.array_equal(a, b) for a, b in zip(one[0], two[0]))
    assert all(np.array_equal(a, b) for a, b in zip(one[1] + one[2], two[1] + two[2]))
    assert one[3] == two[3] and one[3][ON_DEVICE, "kv"] > 0


def test_cuda_graph_on_without_the_cuda_provider_is_refused_naming_the_setting(models_dir):
    with pytest.raises(PackageError, match=r"cuda_graph = on needs the CUDA execution provider"):
        open_runner(models_dir, cuda_graph="on")
    assert open_runner(models_dir, cuda_graph="auto").cuda_graph is False


def test_the_config_names_a_bad_cuda_graph_setting(tmp_path):
    from appliance.errors import ConfigError
    from appliance.server.config import load_config

    (tmp_path / "models").mkdir()
    with pytest.raises(ConfigError, match="runtime.cuda_graph"):
        load_config(None, {"server": {"models": tmp_path / "models"}, "runtime": {"cuda_graph": "sometimes"}})


@pytest.fixture(scope="module")
def fp16_package(sources, tmp_path_factory):
    from tests.conftest import export_or_fail

    return export_or_fail(sources["llama"], tmp_path_factory.mktemp("fp16") / "llama-cuda-fp16",
                          "--target", "cuda", "--precision", "fp16")


def test_an_fp16_package_keeps_fp16_state_and_hands_the_sampler_fp32_logits(models_dir, fp16_package):
    half = SharedKVRunner(fp16_package, open_package(fp16_package), RuntimeOptions(intra_op_threads=1), max_batch=2)
    assert half._kv[0].dtype == half._logits.dtype == np.float16  # as the package declares
    full = open_runner(models_dir)
    logits = [half.prefill(0, PROMPTS[0], 0), full.prefill(0, PROMPTS[0], 0)]
    assert logits[0].dtype == np.float32
    for step in range(8):
        assert np.abs(logits[0] - logits[1]).max() < 5e-2
        token = np.asarray([int(np.argmax(logits[1]))])
        logits = [runner.decode(token, np.asarray([len(PROMPTS[0]) + step]))[0] for runner in (half, full)]


class HostCudart:
    """The CUDA runtime calls CudaDevice makes, done on host memory: CudaDevice's offsets, pitches
    and staging run on this host exactly as they would against a GPU."""

    def cudaMemcpy(self, dst, src, count, kind):
        ctypes.memmove(dst, src, count)
        return 0

    def cudaMemcpy2D(self, dst, dpitch, src, spitch, width, height, kind):
        for row in range(height):
            ctypes.memmove(dst.value + row * dpitch, src.value + row * spitch, width)
        return 0

    def cudaMemset(self, ptr, value, count):
        ctypes.memset(ptr, value, count)
        return 0

    def cudaSetDevice(self, device_id):
        return 0

    def cudaDeviceSynchronize(self):
        return 0


class CudaOnHost(CudaDevice):
    ort_device = "cpu"  # ORT allocates host memory; every copy still goes through the CUDA calls

    def __init__(self):
        super().__init__(0, HostCudart())


def test_the_cuda_device_layer_gives_the_cpu_tokens_and_moves_the_same_bytes(models_dir):
    results = []
    for device in (CudaOnHost(), CpuDevice()):
        runner = open_runner(models_dir, device=device)
        lengths = fill(runner)
        runner.move(2, 0, int(lengths[2]))  # a compaction, then rows of unequal length decode
        runner.release(2)
        logits = [runner.decode(np.asarray([3, 4]), np.asarray([lengths[2], lengths[1]])).copy()]
        logits.append(runner.prefill(1, [21, 22, 23], int(lengths[1]) + 1))
        logits += through_the_pool(runner)  # rows 0 and 3 rewritten: block copies between buffers
        results.append((logits, dict(device.traffic)))
    (cuda_logits, cuda_traffic), (cpu_logits, cpu_traffic) = results
    assert all(np.array_equal(a, b) for a, b in zip(cuda_logits, cpu_logits))
    assert cuda_traffic == cpu_traffic


class CapturedRunsFail:
    """A session whose CUDA-graph runs fail, as where ORT cannot capture a step; the rest is real."""

    def __init__(self, session):
        self._session = session

    def __getattr__(self, name):
        return getattr(self._session, name)

    def run_with_iobinding(self, binding, options=None):
        if options is not None and options.get_run_config_entry("gpu_graph_id") != "-1":
            raise RuntimeError("capture failed")
        return self._session.run_with_iobinding(binding, options)


@pytest.mark.parametrize("setting", ["auto", "on"])
def test_a_failing_captured_step_falls_back_to_plain_runs_only_under_auto(models_dir, monkeypatch, caplog, setting):
    import appliance.engine.shared_kv_runner as module

    real = module.open_decoder_session
    monkeypatch.setattr(module, "open_decoder_session", lambda path, manifest, options: (
        CapturedRunsFail(real(path, manifest, dataclasses.replace(options, cuda_graph="off"))[0]), True))
    runner = open_runner(models_dir, cuda_graph=setting)
    lengths = fill(runner)
    if setting == "on":
        with pytest.raises(RuntimeError, match="capture failed"):
            runner.decode(np.asarray([3, 4, 5]), lengths)
        return
    logits = runner.decode(np.asarray([3, 4, 5]), lengths)
    assert runner.cuda_graph is False and "without CUDA graphs" in caplog.text
    reference = open_runner(models_dir)
    fill(reference)
    assert np.array_equal(reference.decode(np.asarray([3, 4, 5]), lengths), logits)
