"""What batch invariance costs: decode throughput with and without the padding the probe picks.

    .venv/bin/python benchmarks/engine/bench_batch_invariance.py [--threads 2] [--steps 32] [--repeat 3]

Same SmolLM-135M-shaped random-weight packages as bench_engine.py (int4 block 128 and block 32,
accuracy level 4). For each: what appliance.engine.batch_invariance.probe finds on this host
(does it hold unpadded; which row quantum makes it hold; the one-row cost it measured), then
decode tokens/s at 1, 2, 3, 4 and 8 rows without padding and with the probe's quantum, timed in
turns within one run (these machines are noisy: read the ratio column, not the absolute figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.engine.bench_engine import prepare  # noqa: E402

ROWS = (1, 2, 3, 4, 8)


def decode_rate(runner, rows: int, steps: int, quantum: int) -> float:
    runner.row_quantum = quantum
    for row in range(rows):
        runner.prefill(row, list(range(3, 35)), 0)
    lengths = np.full(rows, 32, np.int64)
    tokens = np.full(rows, 7, np.int64)
    runner.decode(tokens, lengths)  # warm this shape
    lengths += 1
    start = time.perf_counter()
    for _ in range(steps):
        runner.decode(tokens, lengths)
        lengths += 1
    elapsed = time.perf_counter() - start
    for row in range(rows):
        runner.release(row)
    return rows * steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-engine")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from appliance.engine.batch_invariance import probe
    from appliance.engine.providers import RuntimeOptions
    from appliance.engine.runners import open_decoder_runner
    from appliance.model_package import open_package

    _, packages, _ = prepare(args.work)
    for recipe, package in packages.items():
        runner = open_decoder_runner(package, open_package(package), RuntimeOptions(intra_op_threads=args.threads),
                                     max_batch=8, max_context=512)
        native = probe(runner, "off")
        report = probe(runner, "always")
        quantum = report.row_quantum
        runner.set_row_quantum(max(quantum, 1))
        print(f"\n{recipe}: unpadded {'holds' if native.holds else 'does not hold'}; {report.note}; "
              f"probe's one-row cost {report.padding_cost:+.1%}")
        print(f"{'rows':>4} {'unpadded tok/s':>15} {f'padded to {quantum} tok/s':>19} {'ratio':>7}")
        for rows in ROWS:
            plain, padded = [], []
            for _ in range(args.repeat):
                plain.append(decode_rate(runner, rows, args.steps, 1))
                padded.append(decode_rate(runner, rows, args.steps, quantum))
            p, q = statistics.median(plain), statistics.median(padded)
            print(f"{rows:>4} {p:>15.1f} {q:>19.1f} {q / p:>7.3f}")


if __name__ == "__main__":
    main()
