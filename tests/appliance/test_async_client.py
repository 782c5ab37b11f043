"""The asyncio client, and a full queue answered at once with RESOURCE_EXHAUSTED over gRPC."""

import asyncio
import shutil
import threading

import grpc
import pytest

from appliance.async_client import AsyncApplianceClient
from appliance.server.config import load_config
from tests.conftest import InProcessDaemon, free_port, wait_for


def test_async_client_streams_and_embeds(daemon, client):
    async def run():
        async with AsyncApplianceClient(daemon.target, timeout_s=60) as aclient:
            chunks = [c async for c in aclient.generate("llama", "Hello", max_tokens=6, ignore_eos=True)]
            vectors = await aclient.embed("minilm", ["refund"])
        return chunks, vectors

    chunks, vectors = asyncio.run(run())
    sync = list(client.generate("llama", "Hello", max_tokens=6, ignore_eos=True))
    assert [t for c in chunks for t in c.token_ids] == [t for c in sync for t in c.token_ids]
    assert chunks[-1].finish_reason == "length" and vectors.shape == (1, 384)


def test_a_full_queue_is_refused_at_once_over_grpc(models_dir, tmp_path):
    served = tmp_path / "models"
    served.mkdir()
    shutil.copytree(models_dir / "llama", served / "llama")
    config = load_config(None, {"server": {"models": served, "listen": f"127.0.0.1:{free_port()}", "max_queue": 1},
                                "engine": {"max_batch": 1}})
    with InProcessDaemon(config) as running:
        engine = running.daemon.registry.get("llama").engine.replicas[0]
        gate = threading.Event()
        real_decode = engine.runner.decode
        engine.runner.decode = lambda *args, **kwargs: (gate.wait(30), real_decode(*args, **kwargs))[1]

        async def scenario():
            async with AsyncApplianceClient(running.target, timeout_s=60) as aclient:
                async def stream():
                    return [c async for c in aclient.generate("llama", "hold", max_tokens=3, ignore_eos=True)]

                running_one = asyncio.create_task(stream())
                await asyncio.sleep(0.5)
                waiting_one = asyncio.create_task(stream())
                await asyncio.sleep(0.5)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stream()
                gate.set()
                return refused.value, await running_one, await waiting_one

        refused, first, second = asyncio.run(scenario())
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert first[-1].completion_tokens == 3 and second[-1].completion_tokens == 3
        assert wait_for(lambda: not engine.busy)
