"""This engine side by side with onnxruntime-genai, Optimum and transformers, in one run.

    .venv/bin/python benchmarks/engine/bench_engine.py [--tokens 64] [--threads 2] [--repeat 3]
    .venv/bin/python benchmarks/engine/bench_engine.py --provider cuda --package DIR [--package DIR2]
        [--cuda-graph on|off|auto] [--concurrency 1 8] [--json FILE]
    .venv/bin/python benchmarks/engine/bench_engine.py --package DIR --baseline REV --skip genai

Without --package the model is random weights in SmolLM-135M's shape (30 layers, hidden 576,
9 query / 3 KV heads, MLP 1536, vocab 32000): built once under --work, exported as int4 builder
packages with block 128 (the fastest CPU recipe; its kernels round differently for several rows
than for one, so it is not batch-invariant, see the manifest's `batch_invariant`) and block 32
(batch-invariant), both at accuracy level 4, and as an fp32 Optimum package for
ORTModelForCausalLM. With --package, the given builder packages (e.g. `--target cuda` fp16 and
int4 ones for a GPU host) are measured instead, by this engine and by genai; --provider picks the
execution provider (cpu, cuda, tensorrt) and --cuda-graph whether decode steps replay CUDA graphs.
--baseline REV adds this engine with the shared-KV runner of git revision REV, so a runner change
is compared with the one before it in the same run. --prefill-graph both measures this engine on a
package that carries a prefill graph twice, prefilling on it and on the decode graph ([runtime]
prefill_graph auto and off); --prompt-tokens 1000 shows the time to first token behind a long prompt.
Every contender gets the same prompts (--prompt-tokens, 32 by default), greedy decoding, ignore-EOS,
--threads threads.

The contenders are loaded together and take turns, so the machine's drift falls on all of them.
Printed per contender: batch-1 decode tokens/s and time to first token, and aggregate tokens/s at
each --concurrency (1, 4, 8 and 16 concurrent sequences by default); for this engine also the
fraction of the memory-bandwidth roofline on CPU (weight bytes read per step x steps per second /
measured read bandwidth). Medians over --repeat runs with the spread (min-max). These machines
are noisy: compare ratios within one run. --json FILE writes the first contender's batch-1 decode
tokens/s, time to first token and aggregate tokens/s at 8 streams (decode_tokens_per_s_batch1,
ttft_ms_batch1, aggregate_tokens_per_s_8) and every contender's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from roofline import read_bandwidth_gbs, step_weight_bytes  # noqa: E402 (this script's folder)

CONCURRENCY = (1, 4, 8, 16)
PROMPT_TOKENS = 32


def prepare(work: Path) -> tuple[Path, Path, Path]:
    from export.tiny_models import export_random_decoder

    source = work / "src" / "smollm-135m"
    made = export_random_decoder(source, {"int4-b128": ["--precision", "int4", "--block-size", "128"],
                                          "int4-b32": ["--precision", "int4", "--block-size", "32"],
                                          "fp32-optimum": ["--backend", "optimum"]}, work / "packages",
                                 hidden_size=576, layers=30, heads=9, kv_heads=3, context_length=2048,
                                 intermediate_size=1536, vocab_size=32000)
    return source, {recipe: made[recipe] for recipe in ("int4-b128", "int4-b32")}, made["fp32-optimum"]


def prompts(vocab: int, count: int, length: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(3, min(vocab, 1000), length).tolist() for _ in range(count)]


# ---- contenders: each returns (ttft_s, decode_tokens_per_s) for one batch ---------------------

def baseline_runner(revision: str):
    """The SharedKVRunner class of git revision `revision`, imported from its text (it imports
    today's package_session and providers, which stay compatible with it)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:appliance/engine/shared_kv_runner.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "baseline_shared_kv_runner.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SharedKVRunner


class OurEngine:
    def __init__(self, package: Path, threads: int, rows: int, provider: str = "cpu", cuda_graph: str = "auto",
                 runner_class=None, label: str = "", prefill_graph: str = "auto", context: int = 512,
                 flush_denormals: bool = True):
        from tokenizers import Tokenizer

        from appliance.engine.engine import GenerationEngine
        from appliance.engine.providers import RuntimeOptions
        from appliance.engine.runners import open_decoder_runner
        from appliance.engine.scheduler import SchedulerConfig
        from appliance.model_package import open_package

        manifest = open_package(package)
        options = RuntimeOptions((provider,), intra_op_threads=threads, cuda_graph=cuda_graph,
                                 prefill_graph=prefill_graph, flush_denormals=flush_denormals)
        if runner_class is None:
            runner = open_decoder_runner(package, manifest, options, max_batch=rows, max_context=context)
        else:
            runner = runner_class(package, manifest, options, max_batch=rows, context_length=context)
        if manifest.prefill_graph is not None:
            split = getattr(runner, "prefill_session", None) is not None
            label += f" (prefill on {manifest.prefill_graph.file})" if split else " (prefill graph off)"
        if not flush_denormals:
            label += " (denormals kept)"
        graphs = "on" if getattr(runner, "cuda_graph", False) else "off"
        on = "" if provider == "cpu" else f" [{runner.provider.removesuffix('ExecutionProvider')}, graphs {graphs}]"
        self.name = f"appliance engine {package.name}{label}{on}"
        self.engine = GenerationEngine(runner, Tokenizer.from_file(str(package / "tokenizer.json")), [],
                                       SchedulerConfig(max_batch=rows, max_step_tokens=1024, prefill_chunk=512))

    def run(self, batch: list[list[int]], tokens: int) -> tuple[float, float, float]:
        from appliance.engine.sampling import SamplingParams

        async def all_streams():
            async def one(ids):
                last = None
                async for event in self.engine.generate(ids, SamplingParams(max_tokens=tokens, ignore_eos=True)):
                    last = event
                return last
            start = time.perf_counter()
            finals = await asyncio.gather(*(one(ids) for ids in batch))
            return finals, time.perf_counter() - start

        finals, wall = asyncio.run(all_streams())
        ttft = statistics.median(f.timings.time_to_first_token_ns for f in finals) / 1e9
        decode = statistics.median(f.completion_tokens / max(f.timings.decode_ns / 1e9, 1e-9) for f in finals)
        return ttft, decode, len(batch) * tokens / wall

    def close(self):
        self.engine.close()


class GenAI:
    def __init__(self, package: Path, threads: int, work: Path, prompt_tokens: int):
        import onnxruntime_genai as og

        self.prompt_tokens = prompt_tokens
        self.name = f"onnxruntime-genai {package.name}"
        # A copy whose genai_config pins the thread count (the package itself stays untouched).
        copy = work / f"genai-copy-{package.name}"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir(parents=True)
        for item in package.iterdir():
            (copy / item.name).symlink_to(item)
        (copy / "genai_config.json").unlink()
        config = json.loads((package / "genai_config.json").read_text())
        config["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        (copy / "genai_config.json").write_text(json.dumps(config))
        self.og = og
        self.model = og.Model(str(copy))

    def run(self, batch, tokens):
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.prompt_tokens + tokens, do_sample=False, batch_size=len(batch))
        generator = og.Generator(self.model, params)
        start = time.perf_counter()
        generator.append_tokens(np.asarray(batch, np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        produced = 1
        while not generator.is_done() and produced < tokens:
            generator.generate_next_token()
            produced += 1
        end = time.perf_counter()
        return first - start, (produced - 1) / (end - first), len(batch) * produced / (end - start)

    def close(self):
        pass


class OptimumORT:
    name = "optimum ORTModelForCausalLM (fp32)"

    def __init__(self, package: Path, threads: int):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.model = ORTModelForCausalLM.from_pretrained(package, session_options=options, use_cache=True,
                                                         local_files_only=True)

    def run(self, batch, tokens):
        return _hf_generate(self.model, batch, tokens)

    def close(self):
        pass


class TorchHF:
    name = "transformers + PyTorch (fp32)"

    def __init__(self, source: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()

    def run(self, batch, tokens):
        import torch

        with torch.no_grad():
            return _hf_generate(self.model, batch, tokens)

    def close(self):
        pass


def _hf_generate(model, batch, tokens):
    import torch

    ids = torch.tensor(batch)
    mask = torch.ones_like(ids)
    common = dict(attention_mask=mask, do_sample=False, pad_token_id=0)
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **common)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **common)
    total = time.perf_counter() - start
    decode_rate = (tokens - 1) / max(total - first, 1e-9)
    return first, decode_rate, len(batch) * tokens / total


def measure(live: list, all_prompts, tokens, repeat, concurrency) -> dict:
    """Each contender's runs per concurrency. The contenders take turns, in a rotating order,
    for every repeat and concurrency, so a machine that gets busier or quieter weighs on all."""
    for contender in live:
        contender.run(all_prompts[:1], 4)  # warm-up
    figures = {contender.name: {n: [] for n in concurrency} for contender in live}
    for turn in range(repeat):
        for n in concurrency:
            for contender in live[turn % len(live):] + live[: turn % len(live)]:
                figures[contender.name][n].append(contender.run(all_prompts[:n], tokens))
    return figures


def spread(values) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.0f}-{max(values):.0f})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/engine-bench"),
                        help="where the SmolLM-shaped packages are built (without --package)")
    parser.add_argument("--package", type=Path, action="append", default=[],
                        help="a builder package to measure (repeatable); default: build the SmolLM-shaped ones")
    parser.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                        help="execution provider of this engine's sessions")
    parser.add_argument("--cuda-graph", choices=("auto", "on", "off"), default="auto",
                        help="whether decode steps replay CUDA graphs ([runtime] cuda_graph)")
    parser.add_argument("--baseline", metavar="REV",
                        help="also measure this engine with the shared-KV runner of git revision REV")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per sequence")
    parser.add_argument("--prompt-tokens", type=int, default=PROMPT_TOKENS, help="tokens per prompt")
    parser.add_argument("--prefill-graph", choices=("auto", "off", "both"), default="auto",
                        help="prefill on a package's prefill graph ([runtime] prefill_graph), or measure both")
    parser.add_argument("--flush-denormals", choices=("on", "off"), default="on",
                        help="whether this engine flushes subnormal floats ([runtime] flush_denormals); the "
                             "mode holds for the whole process, so compare the two in two runs")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per session")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median and spread)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY),
                        help="concurrent sequences to measure (1 is always measured)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("ours", "genai", "optimum", "torch"),
                        help="contenders to leave out")
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    args.concurrency = sorted({1, *args.concurrency})
    missing = [str(p) for p in args.package if not (p / "manifest.json").is_file()]
    if missing:
        parser.error(f"--package {missing[0]}: no manifest.json there")
    return args


def contenders(args, packages: dict, source, fp32) -> list:
    from appliance.model_package import read_manifest

    rows, context = max(args.concurrency), max(512, args.prompt_tokens + args.tokens + 1)
    settings = ("auto", "off") if args.prefill_graph == "both" else (args.prefill_graph,)
    made = []
    for package in packages.values():
        for setting in settings if read_manifest(package).prefill_graph is not None else settings[:1]:
            made.append(("ours", lambda package=package, setting=setting: OurEngine(
                package, args.threads, rows, args.provider, args.cuda_graph, prefill_graph=setting,
                context=context, flush_denormals=args.flush_denormals == "on")))
        if args.baseline:
            made.append(("ours", lambda package=package: OurEngine(
                package, args.threads, rows, args.provider, args.cuda_graph, baseline_runner(args.baseline),
                f" (runner of {args.baseline})", context=context)))
        made.append(("genai", lambda package=package: GenAI(package, args.threads, args.work, args.prompt_tokens)))
    if fp32 is not None:
        made += [("optimum", lambda: OptimumORT(fp32, args.threads)), ("torch", lambda: TorchHF(source, args.threads))]
    return [(key, make) for key, make in made if key not in args.skip]


def summary(figures: dict) -> dict:
    """The figures `make gpu-check` prints, for one contender."""
    def median(n, index):
        return statistics.median(r[index] for r in figures[n]) if n in figures else None
    ttft = median(1, 0)
    return {"decode_tokens_per_s_batch1": median(1, 1), "ttft_ms_batch1": ttft and ttft * 1e3,
            "aggregate_tokens_per_s_8": median(8, 2),
            "aggregate_tokens_per_s": {str(n): median(n, 2) for n in figures}}


def print_table(args, results: dict) -> None:
    header = f"{'contender':52} {'TTFT ms':>9} {'b1 decode tok/s':>22}"
    header += "".join(f" {'agg tok/s @' + str(n):>22}" for n in args.concurrency)
    print(header)
    for name, figures in results.items():
        b1 = figures[1]
        row = f"{name:52} {statistics.median(r[0] for r in b1) * 1e3:9.1f} {spread([r[1] for r in b1]):>22}"
        row += "".join(f" {spread([r[2] for r in figures[n]]):>22}" for n in args.concurrency)
        print(row)


def print_ratios(args, results: dict, packages: dict, weights: dict, bandwidth) -> None:
    def best(n, index):
        return max((statistics.median(r[index] for r in f[n]) for name, f in results.items()
                    if name.startswith("onnxruntime-genai") and n in f), default=None)
    best_b1, best_8 = best(1, 1), best(8, 2)
    for name, figures in results.items():
        package = next((p for p in packages if name.startswith(f"appliance engine {p}")), None)
        if package is None:
            continue
        b1 = statistics.median(r[1] for r in figures[1])
        line = f"{name}:"
        if package in weights:
            line += f" roofline fraction at batch 1 {b1 * weights[package] / (bandwidth * 1e9):.2f};"
        if 8 in figures:
            agg8 = statistics.median(r[2] for r in figures[8])
            line += f" aggregate @8 / own batch-1 {agg8 / b1:.2f};"
            if best_8:
                line += f" aggregate @8 / genai's best @8 {agg8 / best_8:.2f};"
        if best_b1:
            line += f" batch-1 / genai's best {b1 / best_b1:.2f}"
        print(line.rstrip(";"))


def main() -> int:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.flush_denormals == "on":  # as the daemon does: before any session, so every thread flushes
        from appliance.engine.providers import flush_denormals_on_this_thread

        flush_denormals_on_this_thread()
    if args.package:
        from appliance.model_package import open_package

        packages, source, fp32 = {p.name: p for p in args.package}, None, None
        vocab = min(open_package(p).vocab_size for p in args.package)
    else:
        source, packages, fp32 = prepare(args.work)
        vocab = 32000
    all_prompts = prompts(vocab, max(args.concurrency), args.prompt_tokens)
    on_cpu = args.provider == "cpu"
    bandwidth = read_bandwidth_gbs() if on_cpu else None
    weights = {name: step_weight_bytes(path) for name, path in packages.items()} if on_cpu else {}

    live, unmeasured = [], []
    for key, make in contenders(args, packages, source, fp32):
        try:
            live.append(make())
        except Exception as exc:  # a contender this host cannot run (no genai build for the provider ...)
            unmeasured.append(f"not measured: {key}: {type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}")
    try:
        results = measure(live, all_prompts, args.tokens, args.repeat, args.concurrency) if live else {}
    finally:
        for contender in live:
            contender.close()

    print(f"{', '.join(packages)} on {args.provider}; {args.prompt_tokens}-token prompts, {args.tokens} greedy tokens, "
          f"{args.threads} threads, median (min-max) of {args.repeat} runs")
    if on_cpu:
        print(f"read bandwidth {bandwidth:.1f} GB/s; weights read per decode step: "
              + ", ".join(f"{name} {w / 1e6:.1f} MB (roofline {bandwidth * 1e9 / w:.0f} steps/s)"
                          for name, w in weights.items()))
    print_table(args, results)
    print_ratios(args, results, packages, weights, bandwidth)
    for line in unmeasured:  # last, so that a caller reading the last line reads why
        print(line)
    if args.json:
        per_contender = {name: summary(figures) for name, figures in results.items()}
        first = next(iter(per_contender.values()), {})
        args.json.write_text(json.dumps({**first, "provider": args.provider, "cuda_graph": args.cuda_graph,
                                         "contenders": per_contender}, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
