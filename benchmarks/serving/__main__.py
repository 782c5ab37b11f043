"""The serving benchmark (issue 18): a customer-service workload with Poisson arrivals against this
daemon with and without its prefix cache, the onnxruntime-genai Engine and OpenVINO GenAI.

    .venv/bin/python -m benchmarks.serving --quick          # smoke run: tiny model, a few requests
    .venv/bin/python -m benchmarks.serving [--models smollm-135m qwen2.5-0.5b] [--contenders ...]
        [--rates 0.1 0.2] [--json build/serving/result.json] [--rebuild]

Per model and contender: the capacity (highest rate of new conversations whose TTFT p99 stays
under 5 s, by a short doubling-then-bisecting search), then 50%, 80% and 100% of it, and every
contender at 80% of the genai Engine's capacity; then the first-token time after a seen and an
unseen ~1,000-token prefix (daemon-cache and openvino), and the memory soak (first model only).
The genai Engine and OpenVINO run in a peer process with the same arrivals (peers.py); the
daemon is driven over loopback gRPC. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from . import contenders, models, report
from .prompts import Prompts
from .soak import soak
from .stats import find_capacity
from .workload import QUESTIONS, WorkloadSpec, grow_text, system_prompt

LOADS = ((0.5, "50% cap"), (0.8, "80% cap"), (1.0, "100% cap"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny model, few requests (~3 min)")
    parser.add_argument("--models", nargs="+", choices=[m for m in models.SHAPES if m != "tiny"] + ["tiny"])
    parser.add_argument("--contenders", nargs="+", choices=contenders.NAMES)
    parser.add_argument("--rates", type=float, nargs="*",
                        help="measure these rates instead of searching capacity (none: only the headline and soak)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--rebuild", action="store_true", help="re-make sources, packages and OpenVINO exports")
    parser.add_argument("--threads", type=int, default=2, help="threads per contender")
    parser.add_argument("--max-batch", type=int, default=8, help="the daemon's [engine] max_batch")
    parser.add_argument("--cache-config", default=contenders.DEFAULT_CACHE,
                        help="[engine] lines of the daemon-cache contender")
    parser.add_argument("--start-rate", type=float, help="first rate of the capacity search")
    parser.add_argument("--search-steps", type=int, help="measurements per capacity search")
    parser.add_argument("--trial-s", type=float, help="arrival window of a search measurement (s)")
    parser.add_argument("--measure-s", type=float, help="arrival window of a reported measurement (s)")
    parser.add_argument("--headline-repeats", type=int, help="seen / unseen prefix pairs")
    parser.add_argument("--soak-requests", type=int, help="requests in the memory soak (0: none)")
    parser.add_argument("--think-s", type=float, default=0.0, help="pause between a conversation's turns")
    args = parser.parse_args(argv)
    quick = dict(models=["tiny"], contenders=["daemon-cache", "daemon-nocache", "genai"]
                 + (["openvino"] if models.OPENVINO_PYTHON.is_file() else []),
                 start_rate=2.0, search_steps=2, trial_s=3.0, measure_s=4.0, headline_repeats=2, soak_requests=40)
    full = dict(models=["smollm-135m", "qwen2.5-0.5b"], contenders=list(contenders.NAMES), start_rate=0.05,
                search_steps=5, trial_s=60.0, measure_s=120.0, headline_repeats=5, soak_requests=1000)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "genai" in args.contenders:  # its capacity sets the comparison rate of every other contender
        args.contenders = ["genai"] + [c for c in args.contenders if c != "genai"]
    return args


def spec_for(rate: float, window_s: float, quick: bool, think_s: float) -> WorkloadSpec:
    """Conversations enough to fill the arrival window at this rate: at least a few for a percentile
    where that fits in twice the window (a rate far below capacity would otherwise take hours),
    at most a bound that keeps a run finite."""
    low, high = (4, 12) if quick else (8, 120)
    count = max(math.ceil(rate * window_s), min(low, int(2 * window_s * rate)), 3)
    return WorkloadSpec(conversations=min(high, count), rate_per_s=rate, think_s=think_s)


def estimate_s(args) -> float:
    """Rough wall time of the run: measurements fill their arrival windows, then drain; contenders
    load; cold ~1,000-token prefills take seconds each; the soak's uncached half prefills too."""
    drain_s, load_s, cold_s = (3, 5, 0.5) if args.quick else (60, 30, 10)
    searching = args.rates is None
    measurements = len(LOADS) + 1 if searching else len(args.rates)
    per_contender = (load_s + (args.search_steps * (args.trial_s + drain_s) if searching else 0)
                     + measurements * (args.measure_s + drain_s) + 2 * args.headline_repeats * cold_s)
    return len(args.models) * len(args.contenders) * per_contender + args.soak_requests * cold_s / 8


def headline_prompts(prompts: Prompts, repeats: int) -> tuple[list, list]:
    """(primer + seen, unseen) message lists: new questions after the workload's system prompt (seen
    once by the primer) and after an unseen prefix of the same length, alternating."""
    seen_prefix = system_prompt(0, 1000, prompts.count)
    rng = np.random.default_rng(11)
    questions = [grow_text(rng, QUESTIONS, 30, prompts.count) for _ in range(repeats + 1)]
    seen = [[("system", seen_prefix), ("user", q)] for q in questions]
    unseen = [[("system", system_prompt(1000 + k, prompts.count(seen_prefix), prompts.count)), ("user", q)]
              for k, q in enumerate(questions[1:])]
    return seen, unseen


def headlines(opened: dict, prompts: Prompts, repeats: int) -> dict:
    """{name: {"seen_s", "unseen_s"}} of contenders started side by side, each idle while another
    is timed: every repeat times each contender's unseen question, then its seen one, in turn, so
    a slow minute on a shared machine weighs on all of them alike (timed one contender after
    another, the seen-prefix ratio against OpenVINO moved from 0.8x to 1.2x between runs)."""
    seen, unseen = headline_prompts(prompts, repeats)
    for contender in opened.values():
        contender.first_token_times(seen[:1])  # the primer: the prefix is now one each has seen
    out = {name: {"seen_s": [], "unseen_s": []} for name in opened}
    for k in range(repeats):
        for name, contender in opened.items():
            out[name]["unseen_s"] += contender.first_token_times([unseen[k]])
            out[name]["seen_s"] += contender.first_token_times([seen[k + 1]])
    return out


def run_contender(contender, args, genai_capacity) -> dict:
    out: dict = {"runs": []}

    def measure(rate, label, window):
        summary = contender.replay(spec_for(rate, window, args.quick, args.think_s))
        out["runs"].append({"load": label, "rate": rate, **summary})
        print(f"  {contender.name} {label} rate {rate:.3f}/s: TTFT p99 {summary['ttft_p99_ms']:.0f} ms, "
              f"{summary['completed']} ok / {summary['failed']} failed", flush=True)
        return summary

    if args.rates is not None:
        for rate in args.rates:
            measure(rate, "given", args.measure_s)
    else:
        floor = args.start_rate / 2  # one halving: below it a lone conversation already misses the limit
        out["capacity"], _ = find_capacity(lambda r: measure(r, "search", args.trial_s), args.start_rate,
                                           args.search_steps, floor)
        base = out["capacity"] or floor  # below the floor: the loads are fractions of the floor
        for fraction, label in LOADS:
            summary = measure(base * fraction, label if out["capacity"] else f"{label} of floor", args.measure_s)
            if contender.name == "genai" and fraction == 0.8:
                out["at_genai_80"] = summary
        if genai_capacity and contender.name != "genai":
            out["at_genai_80"] = measure(0.8 * genai_capacity, "80% genai cap", args.measure_s)
    return out


def run_headlines(model: str, prompts: Prompts, args, results: dict) -> None:
    """The first-token times of every contender but genai (which keeps no prefix cache), started
    afresh side by side."""
    names = [name for name in args.contenders if name != "genai"]
    if not args.headline_repeats or not names:
        return
    with contextlib.ExitStack() as stack:
        opened = {name: stack.enter_context(contenders.make(name, model, prompts, args)) for name in names}
        print(f"{model}: first-token times of {', '.join(names)}, side by side", flush=True)
        for name, contender in opened.items():
            print(f"  {name}: {contender.describe()}", flush=True)
        for name, head in headlines(opened, prompts, args.headline_repeats).items():
            results.setdefault(name, {"runs": []})["headline"] = head
            print("  " + report.headline_line(name, head), flush=True)


def versions() -> dict:
    found = {name: _version(name) for name in ("onnxruntime", "onnxruntime-genai", "grpcio", "numpy")}
    if models.OPENVINO_PYTHON.is_file():
        code = "import importlib.metadata as m; print(' '.join(m.version(p) for p in ('openvino', 'openvino-genai', "\
               "'optimum-intel', 'nncf')))"
        names = ("openvino", "openvino-genai", "optimum-intel", "nncf")
        found.update(zip(names, subprocess.run([str(models.OPENVINO_PYTHON), "-c", code], capture_output=True,
                                               text=True).stdout.split()))
    revision = subprocess.run(["git", "-C", str(models.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    return {**found, "python": platform.python_version(), "git": revision}


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def main(argv=None) -> int:
    args = parse_args(argv)
    print(f"command: {shlex.join([sys.executable, '-m', 'benchmarks.serving', *sys.argv[1:]])}")
    print(f"versions: {json.dumps(versions())}")
    print(f"models {args.models}, contenders {args.contenders}, {args.threads} threads each; "
          f"estimated duration {estimate_s(args) / 60:.0f} min (excluding first-time exports)", flush=True)
    started = time.perf_counter()
    everything: dict = {"command": sys.argv, "versions": versions(), "models": {}}
    for index, model in enumerate(args.models):
        prompts = Prompts(models.package(model, args.rebuild))
        if args.rebuild and "genai" in args.contenders:
            models.genai_model(model, rebuild=True)
        if args.rebuild and "openvino" in args.contenders:
            models.openvino_model(model, rebuild=True)
        results, genai_capacity = {}, None
        measures_load = args.rates is None or args.rates or (index == 0 and args.soak_requests)
        for name in args.contenders if measures_load else ():
            with contenders.make(name, model, prompts, args) as c:
                print(f"{model}: {name}: {c.describe()}", flush=True)
                results[name] = run_contender(c, args, genai_capacity)
                if name == "genai":
                    genai_capacity = results[name].get("capacity") or args.start_rate / 2
                if index == 0 and name == "daemon-cache" and args.soak_requests:
                    results[name]["soak"] = soak(c, args.soak_requests)
                    print("\n".join("  " + line for line in report.soak_lines(results[name]["soak"])), flush=True)
        run_headlines(model, prompts, args, results)
        everything["models"][model] = results
        rows = [report.row(name, run["load"], run["rate"], run) for name, r in results.items() for run in r["runs"]]
        if rows:
            report.print_table(f"{model}: customer-service workload (ms; rate = new conversations/s)", rows)
        for line in report.comparison_lines(results):
            print(line)
    print(f"took {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(everything, indent=1, default=str))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, TimeoutError, OSError) as exc:  # a contender that would not start or answer
        sys.exit(f"serving benchmark: {exc}")
