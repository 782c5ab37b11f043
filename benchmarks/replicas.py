"""Two one-thread replicas against one two-thread engine, under the serving workload, in one run.

    .venv/bin/python benchmarks/replicas.py PACKAGE [--tokens 64] [--rows 16] [--repeat 2]

Both layouts hold the same KV rows in all (--rows: one engine with that many, or two replicas
with half each) and use the same two cores. For 1, 4, 8 and 16 concurrent streams over loopback
gRPC: aggregate tokens/s and time to first token p50 / p99, measured by the client; the layouts
take turns, --repeat times, and the medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

from grpc_load import drive, pct  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from daemons import serve_alone  # noqa: E402

LEVELS = (1, 4, 8, 16)
LAYOUTS = {"1 engine x 2 threads": (1, 2), "2 replicas x 1 thread": (2, 1)}


def config(replicas: int, rows: int) -> str:
    return (f"[server]\nmax_queue = 64\n[engine]\nreplicas = {replicas}\nmax_batch = {rows // replicas}\n"
            "max_context = 1024\nmax_step_tokens = 1024\nprefill_chunk = 256\n")


def measure(package: Path, replicas: int, threads: int, rows: int, tokens: int) -> dict:
    from appliance.async_client import AsyncApplianceClient

    prompts = [f"Customer {i} asks: where is my parcel number {1000 + i}? It was due last week." for i in range(16)]
    results = {}
    with serve_alone(package, config(replicas, rows), threads) as (target, _):
        async def run_all():
            async with AsyncApplianceClient(target) as client:
                def stream(i):
                    async def chunks():
                        async for chunk in client.generate(package.name, prompts[i], max_tokens=tokens,
                                                           ignore_eos=True):
                            yield len(chunk.token_ids)
                    return chunks()

                await drive(stream, 2)  # warm-up
                for n in LEVELS:
                    results[n] = await drive(stream, n)

        asyncio.run(run_all())
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    package = args.package.resolve()
    runs: dict[str, list[dict]] = {name: [] for name in LAYOUTS}
    for _ in range(args.repeat):
        for name, (replicas, threads) in LAYOUTS.items():
            runs[name].append(measure(package, replicas, threads, args.rows, args.tokens))
    print(f"package {package.name}, {args.tokens} tokens per stream, {args.rows} KV rows in all, "
          f"medians of {args.repeat} runs (TTFT in ms)")
    print(f"{'layout':22} {'streams':>7} {'tok/s':>7} {'TTFT p50':>9} {'TTFT p99':>9}")
    for n in LEVELS:
        for name in LAYOUTS:
            rate = statistics.median(r[n][2] for r in runs[name])
            p50 = statistics.median(pct(r[n][0], 50) for r in runs[name])
            p99 = statistics.median(pct(r[n][0], 99) for r in runs[name])
            print(f"{name:22} {n:7d} {rate:7.0f} {p50:9.1f} {p99:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
