"""Daemon resident memory against its budget, and its growth over many requests.

    .venv/bin/python benchmarks/engine/memory.py PACKAGE [--requests 1000] [--concurrency 8]

Budget: weight bytes + the KV cache the config reserves (max_batch x max_context per layer) +
400 MB. RSS is read from /proc after warm-up, after the first 10% of the requests, and at the end;
"growth" compares the end with the 10% mark, so one-time allocations do not count.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for daemons.py
from daemons import rss_bytes, serve_alone  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-context", type=int, default=1024)
    args = parser.parse_args()

    from appliance.client import ApplianceClient
    from appliance.model_package import open_package

    package = args.package.resolve()
    manifest = open_package(package)
    layout = manifest.kv_layout
    weights = sum(r.size for name, r in manifest.files.items() if name.startswith("model.onnx"))
    context = min(args.max_context, manifest.context_length)
    kv = 2 * layout.num_layers * args.max_batch * layout.num_kv_heads * context * layout.head_dim * 4
    budget = weights + kv + 400 * 2**20
    config = f"[engine]\nmax_batch = {args.max_batch}\nmax_context = {args.max_context}\n"
    with serve_alone(package, config) as (target, daemon):
        warm = rss_bytes(daemon.pid)

        def one(i: int) -> int:
            with ApplianceClient(target) as own:
                return sum(len(c.token_ids) for c in own.generate(
                    package.name, f"Request {i}: where is parcel {i}?", max_tokens=16 + i % 32,
                    temperature=0.7 if i % 2 else 0.0, seed=i, ignore_eos=True))

        tenth = max(args.requests // 10, 1)
        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(tenth)))
            early = rss_bytes(daemon.pid)
            tokens = sum(pool.map(one, range(tenth, args.requests)))
        end = rss_bytes(daemon.pid)
    mb = 2**20
    print(f"package {package.name}: weights {weights / mb:.0f} MB, KV reserved {kv / mb:.0f} MB "
          f"(batch {args.max_batch} x context {context}), budget {budget / mb:.0f} MB")
    print(f"RSS after warm-up {warm / mb:.0f} MB, after {tenth} requests {early / mb:.0f} MB, "
          f"after {args.requests} requests ({tokens} tokens) {end / mb:.0f} MB")
    print(f"RSS / budget: {end / budget:.2f}; growth over the last {args.requests - tenth} requests: "
          f"{(end - early) / mb:+.1f} MB ({(end - early) / early * 100:+.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
