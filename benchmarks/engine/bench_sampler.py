"""The batch sampler against the per-row path it replaced, in one run: host time per decode step.

    .venv/bin/python benchmarks/engine/bench_sampler.py [--steps 10] [--repeat 3] [--logit-scale 6]

For n = 1, 8 and 16 rows and vocabularies of 32000 (SmolLM), 49152 (SmolLM2) and 151936 (Qwen2.5):
"greedy" rows all plain argmax (both paths take one argmax over [n, vocab]); "mixed" rows cycle
through top-k + top-p, greedy, temperature, greedy with penalties, top-p, greedy with logprobs,
min-p, and temperature with penalties and logprobs (n = 1 is the top-k + top-p row). The old path is
the per-row TokenChooser (tests/appliance/engine/row_sampler_reference.py) behind the engine's
former all-greedy shortcut. Logits are random normal times --logit-scale (6 gives top-p nuclei of
tens to hundreds of tokens, as trained models do; 1 is flat, the batch pass's worst case). Both
paths get the same logits and seeds; the run checks that they pick the same tokens. Printed: ms per
step, median (min-max) over --repeat runs of --steps steps, and old / new.
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

from appliance.engine.batch_sampler import BatchSampler  # noqa: E402
from appliance.engine.sampling import RequestSampler, SamplingParams  # noqa: E402
from tests.appliance.engine.row_sampler_reference import TokenChooser  # noqa: E402

VOCABS = (32000, 49152, 151936)
ROWS = (1, 8, 16)
MIXED = [dict(temperature=0.8, top_k=50, top_p=0.9), dict(), dict(temperature=1.0),
         dict(repetition_penalty=1.2, presence_penalty=0.5), dict(temperature=0.7, top_p=0.95),
         dict(logprobs=5), dict(temperature=1.0, min_p=0.05),
         dict(temperature=0.9, frequency_penalty=0.3, logprobs=2)]


def row_params(mix: str, rows: int) -> list[SamplingParams]:
    kinds = [dict()] * rows if mix == "greedy" else [MIXED[i % len(MIXED)] for i in range(rows)]
    return [SamplingParams(max_tokens=10_000, seed=1000 + i, **kind) for i, kind in enumerate(kinds)]


def old_step(choosers: list[TokenChooser], logits: np.ndarray) -> list[int]:
    """The engine's former _update: one argmax when every row is a bare argmax, else row by row."""
    if all(c.params.greedy and not c.params.penalised and c.params.logprobs is None for c in choosers):
        return np.argmax(logits, axis=-1).tolist()
    return [c.choose(row).token_id for c, row in zip(choosers, logits)]


def new_step(sampler: BatchSampler, samplers: list[RequestSampler], logits: np.ndarray) -> list[int]:
    return [c.token_id for c in sampler.sample(logits, samplers, [()] * len(samplers))]


def timed(step, total_ns: int, *args):
    start = time.perf_counter_ns()
    tokens = step(*args)
    return tokens, total_ns + time.perf_counter_ns() - start


def measure(params: list[SamplingParams], steps: list[np.ndarray]) -> tuple[float, float, bool]:
    """ms per step of the old and the new path over the same logits; whether their tokens agree."""
    choosers, samplers, batch = [TokenChooser(p) for p in params], [RequestSampler(p) for p in params], BatchSampler()
    old_ns = new_ns = 0
    same = True
    for index, logits in enumerate(steps):
        # The paths alternate, and which goes first (finding the logits in cache or not), so drift
        # and cache fall on both.
        first_old = index % 2 == 0
        if not first_old:
            new, new_ns = timed(new_step, new_ns, batch, samplers, logits)
        old, old_ns = timed(old_step, old_ns, choosers, logits)
        if first_old:
            new, new_ns = timed(new_step, new_ns, batch, samplers, logits)
        same = same and old == new
    return old_ns / len(steps) / 1e6, new_ns / len(steps) / 1e6, same


def nucleus_size(logits: np.ndarray, temperature: float, top_p: float) -> int:
    scaled = logits.astype(np.float64) / temperature
    probs = np.sort(np.exp(scaled - scaled.max()))[::-1]
    return int(np.searchsorted(np.cumsum(probs / probs.sum()), top_p)) + 1


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="decode steps per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median and spread)")
    parser.add_argument("--logit-scale", type=float, default=6.0, help="standard deviation of the random logits")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'vocab':>7} {'rows':>4} {'mix':>6} {'old ms/step':>22} {'batch ms/step':>22} {'old/new':>8} "
          f"{'same tokens':>11}")
    for vocab in VOCABS:
        steps = [(rng.normal(size=(max(ROWS), vocab)) * args.logit_scale).astype(np.float32)
                 for _ in range(args.steps)]
        for rows in ROWS:
            for mix in ("greedy", "mixed"):
                runs = [measure(row_params(mix, rows), [s[:rows] for s in steps]) for _ in range(args.repeat)]
                old, new = [r[0] for r in runs], [r[1] for r in runs]
                ratio = statistics.median(o / n for o, n in zip(old, new))
                print(f"{vocab:>7} {rows:>4} {mix:>6} {spread(old):>22} {spread(new):>22} {ratio:>7.2f}x "
                      f"{'yes' if all(r[2] for r in runs) else 'NO':>11}")
        print(f"        top-p 0.9 nucleus at temperature 0.8 over this vocabulary's logits: "
              f"{statistics.median(nucleus_size(s[0], 0.8, 0.9) for s in steps)} tokens (median)")


if __name__ == "__main__":
    main()
