"""Batch-1 decode speed: in-process engine versus the same package over loopback gRPC.

    .venv/bin/python benchmarks/grpc_overhead.py demo-output/models/tiny-llama --tokens 128 --runs 5

Both sides run in this one invocation, alternating, so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

from daemons import open_engine, serve_alone  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

PROMPT = "The appliance answers questions about orders and refunds in plain words:"


def in_process(engine, tokenizer, tokens: int) -> tuple[float, float]:
    from appliance.engine.sampling import SamplingParams

    async def run():
        return [e async for e in engine.generate(tokenizer.encode(PROMPT).ids,
                                                  SamplingParams(max_tokens=tokens, ignore_eos=True))]

    last = asyncio.run(run())[-1]
    return last.completion_tokens / (last.timings.decode_ns / 1e9), last.timings.time_to_first_token_ns / 1e6


def over_grpc(client, model: str, tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for chunk in client.generate(model, PROMPT, max_tokens=tokens, ignore_eos=True):
        first = first or time.perf_counter()
    end = time.perf_counter()
    # Client-side: decode rate from the first to the last message, TTFT from the call.
    return (tokens - 1) / (end - first), (first - start) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from appliance.client import ApplianceClient

    package = args.package.resolve()
    engine, tokenizer, manifest = open_engine(package, args.threads)
    try:
        with serve_alone(package, threads=args.threads) as (target, _), ApplianceClient(target) as client:
            local, remote = [], []
            in_process(engine, tokenizer, 8), over_grpc(client, package.name, 8)  # warm-up
            for _ in range(args.runs):
                local.append(in_process(engine, tokenizer, args.tokens))
                remote.append(over_grpc(client, package.name, args.tokens))
    finally:
        engine.close()
    print(f"package {package.name} ({manifest.architecture} {manifest.precision}), {args.tokens} tokens, "
          f"{args.runs} runs, {args.threads} threads; medians:")
    print(f"{'':12} {'decode tok/s':>12} {'TTFT ms':>9}")
    for name, rows in (("in-process", local), ("gRPC", remote)):
        print(f"{name:12} {statistics.median(r[0] for r in rows):12.0f} {statistics.median(r[1] for r in rows):9.2f}")
    ratio = statistics.median(r[0] for r in remote) / statistics.median(r[0] for r in local)
    print(f"gRPC / in-process decode rate: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
