"""The OpenAI-compatible HTTP door against gRPC, one daemon serving both, at 1 and 8 concurrent streams.

    .venv/bin/python benchmarks/http_vs_grpc.py PACKAGE [--tokens 64] [--runs 3]

Per door and concurrency: time to first token (p50, measured by the client), aggregate tokens/s,
and the daemon's own CPU time per token (from /proc: what the door costs the server, whatever else
the machine is doing). Three clients take turns in each round, so machine noise hits them alike: gRPC (the bundled asyncio
client), HTTP through the official `openai` SDK (what applications run; its per-chunk parsing is
client work on this same machine), and HTTP read as raw server-sent events with aiohttp (the door's
own cost). Greedy, ignore_eos, no redaction. An HTTP chunk carries text, so a token that ends
inside a UTF-8 character sends nothing and HTTP's TTFT is to the first text (random-weight models
write many such tokens); a gRPC message carries token ids from the first token on. On a small
machine the clients share the daemon's cores, so their own per-chunk work (the SDK's above all)
lowers every door's tokens/s; the CPU column is the daemon's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from pathlib import Path

from grpc_load import drive, pct  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from daemons import free_port, serve_alone  # noqa: E402

LEVELS = (1, 8)
DOORS = ("gRPC", "HTTP (openai SDK)", "HTTP (raw SSE)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import aiohttp
    import openai

    from appliance.async_client import AsyncApplianceClient

    package = args.package.resolve()
    model = package.name
    prompts = [f"Customer {i} asks: where is my parcel number {1000 + i}? It was due last week." for i in range(8)]
    http = f"127.0.0.1:{free_port()}"
    config = f'[engine]\nmax_batch = 8\nmax_context = 1024\n[http]\nlisten = "{http}"\n'
    body = {"model": model, "max_tokens": args.tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    results: dict[tuple[str, int], list] = {}

    async def run_all(target: str, pid: int):
        async with AsyncApplianceClient(target) as grpc_client, \
                openai.AsyncOpenAI(base_url=f"http://{http}/v1", api_key="unused", max_retries=0) as sdk, \
                aiohttp.ClientSession() as session:
            def over_grpc(i):
                async def stream():
                    async for chunk in grpc_client.generate(model, prompts[i], max_tokens=args.tokens,
                                                            ignore_eos=True):
                        yield len(chunk.token_ids)
                return stream()

            def over_sdk(i):
                async def stream():
                    counted = 0
                    async for chunk in await sdk.completions.create(
                            model=model, prompt=prompts[i], max_tokens=args.tokens, temperature=0, stream=True,
                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}):
                        # A chunk is one engine step's text (one token); the usage chunk settles the count.
                        tokens = chunk.usage.completion_tokens - counted if chunk.usage else 1
                        counted += tokens
                        yield tokens
                return stream()

            def over_sse(i):
                async def stream():
                    counted = 0
                    async with session.post(f"http://{http}/v1/completions", json={**body, "prompt": prompts[i]}) as r:
                        async for line in r.content:
                            if not line.startswith(b"data: {"):
                                continue
                            usage = json.loads(line[6:]).get("usage")
                            tokens = usage["completion_tokens"] - counted if usage else 1
                            counted += tokens
                            yield tokens
                return stream()

            factories = dict(zip(DOORS, (over_grpc, over_sdk, over_sse)))
            for factory in factories.values():  # warm-up; the HTTP clients' pools then hold a connection per stream
                await drive(factory, max(LEVELS))
            for _ in range(args.runs):
                for n in LEVELS:
                    for door, factory in factories.items():
                        cpu = cpu_seconds(pid)
                        ttfts, _, rate = await drive(factory, n)
                        # The daemon's CPU over the same span; every stream writes args.tokens tokens.
                        results.setdefault((door, n), []).append((ttfts, rate, cpu_seconds(pid) - cpu))

    with serve_alone(package, config, args.threads) as (target, daemon):
        asyncio.run(run_all(target, daemon.pid))

    print(f"package {model}, {args.tokens} tokens per stream, {args.runs} rounds, {args.threads} threads "
          "(medians over rounds; TTFT p50 in ms, measured by the client)")
    print(f"{'door':18} {'streams':>7} {'TTFT p50':>9} {'tok/s':>7} {'vs gRPC':>8} {'daemon CPU us/token':>20}")
    for n in LEVELS:
        base = statistics.median(rate for _, rate, _ in results[("gRPC", n)])
        n_tokens = n * args.tokens
        for door in DOORS:
            rounds = results[(door, n)]
            ttft = statistics.median(pct(ttfts, 50) for ttfts, _, _ in rounds)
            rate = statistics.median(r for _, r, _ in rounds)
            cpu = statistics.median(c for _, _, c in rounds) / n_tokens * 1e6
            print(f"{door:18} {n:7d} {ttft:9.1f} {rate:7.0f} {rate / base:8.2f} {cpu:20.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
