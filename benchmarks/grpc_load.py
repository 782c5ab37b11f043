"""The daemon over gRPC at 1, 4, 8, 16 and 32 concurrent streams, next to the in-process engine.

    .venv/bin/python benchmarks/grpc_load.py PACKAGE [--tokens 64] [--max-batch 16]

For each concurrency: time to first token and inter-token latency (p50 / p99 over all streams,
measured by the client), and aggregate tokens/s, for the daemon over loopback gRPC (asyncio
client, one channel) and for the same package driven in-process, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

from daemons import open_engine, serve_alone  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

LEVELS = (1, 4, 8, 16, 32)


async def drive(stream_factory, n: int) -> tuple[list[float], list[float], float]:
    """Runs n streams at once; returns TTFTs (s), inter-token gaps (s) and aggregate tokens/s."""
    ttfts, gaps, counts = [], [], []

    async def one(i):
        start = time.perf_counter()
        last, count = None, 0
        async for tokens in stream_factory(i):
            now = time.perf_counter()
            if not tokens:
                continue
            if last is None:
                ttfts.append(now - start)
            else:
                gaps.append((now - last) / tokens)
            last, count = now, count + tokens
        counts.append(count)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return ttfts, gaps, sum(counts) / (time.perf_counter() - start)


def pct(values, q) -> float:
    return float(np.percentile(values, q)) * 1e3 if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from appliance.async_client import AsyncApplianceClient
    from appliance.engine.sampling import SamplingParams
    from appliance.engine.scheduler import SchedulerConfig

    package = args.package.resolve()
    prompts = [f"Customer {i} asks: where is my parcel number {1000 + i}? It was due last week." for i in range(32)]
    scheduling = SchedulerConfig(max_batch=args.max_batch, max_step_tokens=1024, prefill_chunk=256, max_queue=64)
    engine, tokenizer, _ = open_engine(package, args.threads, scheduling, max_context=1024)

    def local(i):
        async def stream():
            async for event in engine.generate(tokenizer.encode(prompts[i]).ids,
                                               SamplingParams(max_tokens=args.tokens, ignore_eos=True)):
                yield len(event.token_ids)
        return stream()

    results = {}
    config = (f"[server]\nmax_queue = 64\n[engine]\nmax_batch = {args.max_batch}\nmax_context = 1024\n"
              "max_step_tokens = 1024\nprefill_chunk = 256\n")
    try:
        with serve_alone(package, config, args.threads) as (target, _):
            async def run_all():
                async with AsyncApplianceClient(target) as aclient:
                    def remote(i):
                        async def stream():
                            async for chunk in aclient.generate(package.name, prompts[i], max_tokens=args.tokens,
                                                                ignore_eos=True):
                                yield len(chunk.token_ids)
                        return stream()

                    await drive(remote, 2)
                    await drive(local, 2)  # warm-up
                    for n in LEVELS:
                        results[("gRPC", n)] = await drive(remote, n)
                        results[("in-process", n)] = await drive(local, n)

            asyncio.run(run_all())
    finally:
        engine.close()
    print(f"package {package.name}, {args.tokens} tokens per stream, max batch {args.max_batch}, "
          f"{args.threads} threads (latencies in ms, measured by the client)")
    print(f"{'path':11} {'streams':>7} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} {'ITL p99':>8} {'tok/s':>7}")
    for n in LEVELS:
        for path in ("in-process", "gRPC"):
            ttfts, gaps, rate = results[(path, n)]
            print(f"{path:11} {n:7d} {pct(ttfts, 50):9.1f} {pct(ttfts, 99):9.1f} {pct(gaps, 50):8.2f} "
                  f"{pct(gaps, 99):8.2f} {rate:7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
