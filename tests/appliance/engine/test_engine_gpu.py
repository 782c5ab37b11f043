"""The engine on the CUDA execution provider: run only where a GPU is present."""

import asyncio

import pytest
from tokenizers import Tokenizer

from appliance.engine.engine import GenerationEngine
from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.engine.sampling import SamplingParams
from appliance.engine.scheduler import SchedulerConfig
from appliance.model_package import open_package

pytestmark = pytest.mark.gpu


def _tokens(models_dir, providers):
    path = models_dir / "llama"
    manifest = open_package(path)
    runner = open_decoder_runner(path, manifest, RuntimeOptions(providers), max_batch=4)
    engine = GenerationEngine(runner, Tokenizer.from_file(str(path / "tokenizer.json")), manifest.eos_token_ids,
                              SchedulerConfig(max_batch=4))

    async def run():
        async def one(ids):
            return [t async for e in engine.generate(ids, SamplingParams(max_tokens=24, ignore_eos=True))
                    for t in e.token_ids]
        return await asyncio.gather(*(one([5 + i, 17, 42]) for i in range(4)))

    try:
        return runner.provider, asyncio.run(run())
    finally:
        engine.close()


def test_cuda_provider_gives_the_cpu_tokens(models_dir):
    provider, on_gpu = _tokens(models_dir, ("cuda", "cpu"))
    assert provider == "CUDAExecutionProvider"
    _, on_cpu = _tokens(models_dir, ("cpu",))
    assert on_gpu == on_cpu
