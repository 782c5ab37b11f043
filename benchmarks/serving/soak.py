"""The memory soak: many requests against one daemon, half behind the shared (cached) system prompt
and half behind a prefix of their own (uncached), while a thread samples the daemon's VmRSS; the
peak is set against weights + KV budget + prefix-cache budget + 400 MB, each read from the package
and the config the daemon was started with."""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.daemons import rss_bytes

from .workload import QUESTIONS, grow_text, system_prompt

MB = 2**20
SLACK = 400 * MB


def budget(package: Path, config_toml: str) -> dict:
    """The budget parts in bytes, read through the daemon's own config parser (so its defaults count)."""
    from appliance.model_package import open_package
    from appliance.server.config import load_config

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(config_toml)
        file.flush()
        engine = load_config(Path(file.name)).engine
    manifest = open_package(package)
    layout = manifest.kv_layout
    context = min(engine.max_context or manifest.context_length, manifest.context_length)
    kv = (2 * layout.num_layers * engine.max_batch * layout.num_kv_heads * context * layout.head_dim
          * np.dtype(layout.dtype).itemsize)
    # The prefill graph's session loads its own weights (the new int8 ones and the tensors it shares
    # with the decode graph's file).
    prefill = manifest.prefill_graph.weight_bytes if manifest.prefill_graph else 0
    parts = {"weights": sum(r.size for name, r in manifest.files.items() if name.startswith("model.onnx")) + prefill,
             "kv": kv, "prefix_cache": engine.prefix_cache_mb * MB, "slack": SLACK}
    return {**parts, "total": sum(parts.values())}


def soak(contender, requests: int, concurrency: int = 4, uncached_tokens: int = 200, answer_tokens: int = 16) -> dict:
    """`contender` is a started DaemonContender; returns RSS figures (bytes) and the budget."""
    from appliance.async_client import AsyncApplianceClient

    shared = system_prompt(0, 1000, contender.prompts.count)
    rng = np.random.default_rng(7)
    questions = [grow_text(rng, QUESTIONS, 20, contender.prompts.count) for _ in range(requests)]
    samples: list[int] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(rss_bytes(contender.process.pid))
            stop.wait(0.2)

    async def run():
        queue = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        failed = 0

        async def worker(client):
            nonlocal failed
            while not queue.empty():
                i = queue.get_nowait()
                system = shared if i % 2 == 0 else system_prompt(10_000 + i, uncached_tokens, contender.prompts.count)
                try:
                    async for _ in contender.stream(client, [("system", system), ("user", questions[i])],
                                                     answer_tokens):
                        pass
                except Exception:  # counted; the soak is about memory, a refusal must not end it
                    failed += 1

        async with AsyncApplianceClient(contender.target) as client:
            await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return failed

    thread = threading.Thread(target=sample, daemon=True)
    start_rss = rss_bytes(contender.process.pid)
    thread.start()
    started = time.perf_counter()
    failed = asyncio.run(run())
    stop.set()
    thread.join()
    return {"requests": requests, "failed": failed, "seconds": time.perf_counter() - started,
            "rss_start": start_rss, "rss_peak": max(samples), "rss_end": samples[-1],
            "budget": budget(contender.package, contender.config_toml)}
