"""What an L7 proxy costs: 8 streams through nginx (and HAProxy) to one daemon against the same 8
streams straight to it, in one run, from the configs shipped in deploy/.

    .venv/bin/python benchmarks/proxy_cost.py PACKAGE [--streams 8] [--tokens 64] [--repeat 3]

Prints aggregate tokens/s and time to first token p50 / p99 (measured by the client) per path:
medians (and the tok/s range) over --repeat rounds in which the paths take turns, and each
proxy's cost against the direct path. Needs nginx and haproxy on PATH (Debian: apt-get install nginx haproxy).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from grpc_load import drive, pct  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from daemons import REPO, free_port, serve_alone  # noqa: E402

sys.path.insert(0, str(REPO))
from tests.deploy.proxies import Proxy  # noqa: E402  (the tests start the proxies the same way)


async def one_round(package: str, target: str, streams: int, tokens: int):
    from appliance.async_client import AsyncApplianceClient

    prompts = [f"Customer {i} asks: where is my parcel number {1000 + i}? It was due last week."
               for i in range(streams)]
    async with AsyncApplianceClient(target) as client:
        def stream(i):
            async def chunks():
                async for chunk in client.generate(package, prompts[i], max_tokens=tokens, ignore_eos=True):
                    yield len(chunk.token_ids)
            return chunks()

        await drive(stream, 2)  # warm-up: connections, the proxy's upstream connection
        return await drive(stream, streams)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    kinds = [kind for kind in ("nginx", "haproxy") if shutil.which(kind)]
    if not kinds:
        print("proxy_cost: neither nginx nor haproxy is installed", file=sys.stderr)
        return 2
    package = args.package.resolve()
    config = f"[engine]\nmax_batch = {args.streams}\n"
    rounds: dict[str, list] = {path: [] for path in ("direct", *kinds)}
    with serve_alone(package, config) as (target, _), tempfile.TemporaryDirectory() as work:
        proxies = [Proxy(kind, free_port(), [target] * 3, Path(work) / kind) for kind in kinds]
        try:
            paths = {"direct": target, **{p.kind: p.target for p in proxies}}
            for _ in range(args.repeat):
                for path, address in paths.items():
                    rounds[path].append(asyncio.run(one_round(package.name, address, args.streams, args.tokens)))
        finally:
            for proxy in proxies:
                proxy.stop()
    print(f"package {package.name}: {args.streams} streams of {args.tokens} tokens, one daemon, "
          f"medians of {args.repeat} rounds (TTFT in ms)")
    print(f"{'path':8} {'tok/s':>7} {'(min-max)':>11} {'TTFT p50':>9} {'TTFT p99':>9} {'tok/s cost':>10} "
          f"{'p99 cost':>9}")
    direct_rate = statistics.median(r[2] for r in rounds["direct"])
    direct_p99 = statistics.median(pct(r[0], 99) for r in rounds["direct"])
    for path, results in rounds.items():
        rate = statistics.median(r[2] for r in results)
        p50 = statistics.median(pct(r[0], 50) for r in results)
        p99 = statistics.median(pct(r[0], 99) for r in results)
        spread = f"({min(r[2] for r in results):.0f}-{max(r[2] for r in results):.0f})"
        print(f"{path:8} {rate:7.0f} {spread:>11} {p50:9.1f} {p99:9.1f} {1 - rate / direct_rate:10.1%} "
              f"{p99 / direct_p99 - 1:9.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
