"""The engine on the CUDA execution provider: run only where a GPU is present (`make gpu-check`).

Packages: the test suite's tiny llama as the CPU fp32 `llama` package and as `llama-cuda-<precision>`
(`--target cuda`, fp16 and int4), brought along in the models folder (offline/gpu_check.py) or
exported here where the export stack is installed. CUDA runs are compared with `llama` on the CPU.
"""

import asyncio
import functools

import numpy as np
import pytest
from tokenizers import Tokenizer

from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.errors import PackageError
from appliance.model_package import open_package
from tests.appliance.engine.streams import collect_many, tokens_of
from tests.conftest import export_or_fail, wait_for

pytestmark = pytest.mark.gpu

CUDA = ("cuda",)
PROMPTS = [[5, 17, 42], [7, 8, 9, 10, 11], [100, 3], [64] * 12, [1, 2, 3, 4], [900, 901], [33, 44, 55], [12] * 7]
# A reduced-precision package may pick another token only where fp32's top two logits nearly tie.
NEAR_TIE = {"fp32": 1e-2, "fp16": 5e-2}


@pytest.fixture(scope="module")
def cuda_package(models_dir, request, tmp_path_factory):
    @functools.cache
    def get(precision: str):
        path = models_dir / f"llama-cuda-{precision}"
        if (path / "manifest.json").is_file():
            return path
        sources = request.getfixturevalue("sources")  # skips where the export stack is missing
        return export_or_fail(sources["llama"], tmp_path_factory.mktemp(precision) / path.name,
                              "--target", "cuda", "--precision", precision)
    return get


def open_runner(path, providers, max_batch=8, cuda_graph="auto"):
    return open_decoder_runner(path, open_package(path), RuntimeOptions(providers, cuda_graph=cuda_graph),
                               max_batch=max_batch)


def greedy(runner, prompt, steps=32):
    """Greedy tokens from the runner itself, and each step's margin between its top two logits."""
    logits = runner.prefill(0, prompt, 0)
    tokens, margins = [], []
    for step in range(steps):
        second, first = np.sort(logits)[-2:]
        tokens.append(int(np.argmax(logits)))
        margins.append(float(first - second))
        logits = runner.decode(np.asarray([tokens[-1]]), np.asarray([len(prompt) + step]))[0]
    runner.release(0)
    return tokens, margins


def engine_on(runner, path):
    return GenerationEngine(runner, Tokenizer.from_file(str(path / "tokenizer.json")), open_package(path).eos_token_ids,
                            SchedulerConfig(max_batch=runner.max_batch))


def jobs(temperature=0.0):
    return [(p, SamplingParams(max_tokens=20 + 2 * i, temperature=temperature, seed=7 + i, ignore_eos=True))
            for i, p in enumerate(PROMPTS)]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_greedy_tokens_agree_with_cpu_fp32_over_32_tokens(models_dir, cuda_package, precision):
    path = models_dir / "llama" if precision == "fp32" else cuda_package(precision)
    gpu = open_runner(path, CUDA, max_batch=1)
    assert gpu.provider == "CUDAExecutionProvider"
    cpu = open_runner(models_dir / "llama", ("cpu",), max_batch=1)
    for prompt in PROMPTS[:4]:
        on_gpu, _ = greedy(gpu, prompt)
        on_cpu, margins = greedy(cpu, prompt)
        parted = next((i for i, (a, b) in enumerate(zip(on_gpu, on_cpu)) if a != b), None)
        assert parted is None or margins[parted] < NEAR_TIE[precision], (
            f"{precision} on CUDA parts from CPU fp32 at token {parted}, where fp32's top two logits are "
            f"{margins[parted]:.3f} apart")


@pytest.mark.parametrize("precision", ["fp16", "int4"])
def test_cuda_packages_load_with_the_kv_dtype_of_the_package_and_run(cuda_package, precision):
    path = cuda_package(precision)
    runner = open_runner(path, CUDA, max_batch=2)
    assert runner.provider == "CUDAExecutionProvider" and runner.device.ort_device == "cuda"
    assert runner._kv[0].dtype == np.dtype(open_package(path).kv_layout.dtype)
    tokens, _ = greedy(runner, PROMPTS[0], steps=8)
    assert len(tokens) == 8 and all(0 <= t < runner.vocab_size for t in tokens)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_a_request_gives_the_same_tokens_alone_and_batched_with_seven_others_on_cuda(cuda_package, temperature):
    path = cuda_package("fp16")
    engine = engine_on(open_runner(path, CUDA), path)
    try:
        alone = [tokens_of(collect_many(engine, [job])[0]) for job in jobs(temperature)]
        together = [tokens_of(events) for events in collect_many(engine, jobs(temperature))]
    finally:
        engine.close()
    assert together == alone


def test_cancelling_a_stream_frees_its_row_on_cuda(cuda_package):
    path = cuda_package("fp16")
    engine = engine_on(open_runner(path, CUDA, max_batch=2), path)

    async def take_three():
        stream = engine.generate(PROMPTS[0], SamplingParams(max_tokens=10_000, ignore_eos=True))
        got = [await stream.__anext__() for _ in range(3)]
        await stream.aclose()
        return got

    try:
        (reference,) = collect_many(engine, [jobs()[1]])
        assert len(asyncio.run(take_three())) == 3
        assert wait_for(lambda: not engine.busy and engine.stats().running == 0)
        (after,) = collect_many(engine, [jobs()[1]])  # the freed row serves the next request
    finally:
        engine.close()
    assert tokens_of(after) == tokens_of(reference)


def test_cuda_graphs_on_and_off_give_the_same_tokens(cuda_package):
    path = cuda_package("fp16")
    try:
        graphed = open_runner(path, CUDA, cuda_graph="on")
    except PackageError as error:  # ORT says why it cannot capture this graph
        pytest.skip(str(error))
    assert graphed.cuda_graph
    plain = open_runner(path, CUDA, cuda_graph="off")
    results = []
    for runner in (graphed, plain):
        engine = engine_on(runner, path)
        try:  # batch sizes 8 down to 1 as the streams end: one graph each, replayed many times
            results.append([tokens_of(events) for events in collect_many(engine, jobs())])
        finally:
            engine.close()
    assert results[0] == results[1]
