"""The GPU check: one command for a GPU host, no network, one table, under 8 minutes.

    make gpu-check [WHEELHOUSE=DIR] [PACKAGES=DIR]
    python3 offline/gpu_check.py [--wheelhouse DIR] [--packages DIR] [--budget-s 450]
    python3 offline/gpu_check.py --make-packages DIR     # on a CPU host with the export stack

Steps, each reported as one row of the table:
1. environment: a Python whose onnxruntime offers the CUDA execution provider. The one running this
   script if it qualifies; otherwise a venv built from --wheelhouse (`make wheelhouse EXTRA=cuda
   PYTHON_VERSION=3.12 WITH_TESTS=1`; split wheels are joined and every wheel checked against
   SHA256SUMS first) with `pip install --no-index`.
2. device: a session on a package's graph asks for CUDA; a host whose driver or GPU is missing
   falls back to CPU, and the check says so instead of timing the CPU.
3. packages: small packages exported beforehand on a CPU host (`make gpu-check-packages`, a few MB,
   `--target cuda` at fp16 and int4, and the CPU fp32 package they are compared with) and brought along, or made here where the export stack is
   installed.
4. GPU tests: `pytest -m gpu` (CUDA tokens against CPU fp32, alone against batched, cancellation,
   CUDA graphs on and off, TensorRT where it is installed, one replica per GPU where there are two).
5. benchmark: benchmarks/engine/bench_engine.py on the CUDA execution provider at fp16 and int4.

Exit status: 0 when every step passed or was skipped with its reason (a host without a GPU skips
everything after step 1 or 2); 1 when a GPU test or the benchmark failed; 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "offline"))

from wheelhouse import WheelhouseError, join_parts, without_dependencies  # noqa: E402

GPU_TESTS = ("tests/appliance/engine/test_engine_gpu.py", "tests/export/test_export_gpu.py",
             "tests/scale/test_devices.py")
BENCH = REPO / "benchmarks" / "engine" / "bench_engine.py"
BENCH_PROVIDER = "cuda"
# Test packages share the tiny llama of the test suite's `models_dir` (same seed, same tokens) so
# that CUDA packages compare with the CPU fp32 one, which CUDA runs too (the genai 0.15.2 builder's
# `--target cuda --precision fp32` graph does not load in ONNX Runtime, hence no such package); the benchmark shape is small enough to carry
# (~25 MB at fp16) yet large enough that a step is not all launch overhead.
TEST_EXPORTS = {
    "llama": [],
    "llama-cuda-fp16": ["--target", "cuda", "--precision", "fp16"],
    "llama-cuda-int4": ["--target", "cuda", "--precision", "int4"],
}
BENCH_SHAPE = dict(hidden_size=384, layers=6, heads=6, kv_heads=2, intermediate_size=1024, vocab_size=8192,
                   context_length=2048)
BENCH_EXPORTS = {
    "bench-cuda-fp16": ["--target", "cuda", "--precision", "fp16"],
    "bench-cuda-int4": ["--target", "cuda", "--precision", "int4"],
}
PROBE = """
import json, sys
import onnxruntime as ort
out = {"version": ort.__version__, "available": ort.get_available_providers()}
if len(sys.argv) > 1:
    try:
        session = ort.InferenceSession(sys.argv[1], providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        out["session"] = session.get_providers()
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
try:
    import appliance  # noqa: F401
    out["appliance"] = True
except ImportError:
    out["appliance"] = False
print(json.dumps(out))
"""


@dataclass
class Row:
    step: str
    result: str  # passed / failed / skipped / figure
    detail: str
    seconds: float = 0.0


@dataclass
class Check:
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    rows: list[Row] = field(default_factory=list)

    def left_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def add(self, step: str, result: str, detail: str, since: float) -> None:
        self.rows.append(Row(step, result, detail, time.monotonic() - since))

    def failed(self) -> bool:
        return any(r.result == "failed" for r in self.rows)

    def table(self) -> str:
        width = {"step": max(len(r.step) for r in self.rows), "result": 7}
        lines = [f"{'step':<{width['step']}}  {'result':<7}  {'time':>6}  detail"]
        for r in self.rows:
            lines.append(f"{r.step:<{width['step']}}  {r.result:<7}  {r.seconds:5.0f}s  {r.detail}")
        return "\n".join(lines)


def _run(cmd: list[str], timeout_s: float, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout_s, 1), cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
    return lines[-1][:200] if lines else f"exit {done.returncode}"


def probe(python: str, model: Path | None = None) -> dict:
    done = _run([python, "-c", PROBE, *([str(model)] if model else [])], 120)
    if done.returncode != 0:
        return {"error": _last_line(done), "available": [], "appliance": False}
    return json.loads(done.stdout.strip().splitlines()[-1])


def environment(check: Check, wheelhouse: Path | None, venv: Path) -> str | None:
    """The Python to run the GPU steps with, or None (the row says why)."""
    since = time.monotonic()
    here = probe(sys.executable)
    if "CUDAExecutionProvider" in here["available"] and here["appliance"]:
        check.add("environment", "passed", f"this Python; onnxruntime {here['version']} with CUDA", since)
        return sys.executable
    if wheelhouse is None:
        what = (f"onnxruntime {here['version']} offers {', '.join(here['available'])}" if "version" in here
                else f"no onnxruntime here ({here.get('error', 'not importable')})")
        check.add("environment", "skipped", f"no CUDA execution provider: {what}; no WHEELHOUSE given", since)
        return None
    python = venv / "bin" / "python"
    try:
        joined = join_parts(wheelhouse)
        if not python.exists():
            done = _run([sys.executable, "-m", "venv", str(venv)], 120)
            if done.returncode != 0:
                raise WheelhouseError(f"venv: {_last_line(done)}")
        done = _run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
                     "appliance[cuda]", "pytest"], min(check.left_s(), 300))
        if done.returncode != 0:
            raise WheelhouseError(f"pip install --no-index: {_last_line(done)}")
        done = _run([str(python), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheelhouse),
                     "--no-deps", *without_dependencies("cuda")], 120)
        if done.returncode != 0:
            raise WheelhouseError(f"pip install --no-deps: {_last_line(done)}")
    except (WheelhouseError, OSError, subprocess.TimeoutExpired) as exc:
        check.add("environment", "failed", str(exc).splitlines()[0], since)
        return None
    there = probe(str(python))
    if "CUDAExecutionProvider" not in there["available"]:
        check.add("environment", "failed", f"installed, but its onnxruntime offers {there['available']}", since)
        return None
    check.add("environment", "passed", f"venv {venv} from {wheelhouse} ({len(joined)} wheels joined from parts); "
              f"onnxruntime {there['version']}", since)
    return str(python)


def make_packages(out: Path) -> list[str]:
    """Exports the test and benchmark packages into out with this Python, which needs the export stack
    (torch, transformers, the builder); returns their names."""
    from export.tiny_models import export_random_decoder  # the export stack: torch, transformers, the builder

    sources = REPO / "build" / "gpu-check-sources"  # not in out: only the packages travel
    made = export_random_decoder(sources / "llama", TEST_EXPORTS, out)
    made |= export_random_decoder(sources / "bench", BENCH_EXPORTS, out, **BENCH_SHAPE)
    return list(made)


def packages(check: Check, given: Path | None, work: Path) -> Path | None:
    since = time.monotonic()
    wanted = [*TEST_EXPORTS, *BENCH_EXPORTS]
    if given is not None:
        missing = [name for name in wanted if not (given / name / "manifest.json").is_file()]
        if missing:
            check.add("packages", "failed", f"{given} lacks {', '.join(missing)} (make gpu-check-packages)", since)
            return None
        check.add("packages", "passed", f"brought along: {given}", since)
        return given
    try:
        made = make_packages(work)
    except ImportError as exc:
        check.add("packages", "skipped", f"none given (PACKAGES=DIR) and no export stack here ({exc.name})", since)
        return None
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        check.add("packages", "failed", str(exc), since)
        return None
    check.add("packages", "passed", f"exported here into {work}: {len(made)}", since)
    return work


def device(check: Check, python: str, models: Path) -> bool:
    since = time.monotonic()
    seen = probe(python, models / "llama-cuda-fp16" / "model.onnx")
    if seen.get("session", [None])[0] == "CUDAExecutionProvider":
        check.add("device", "passed", "a session runs on CUDAExecutionProvider", since)
        return True
    why = seen.get("error") or f"the session fell back to {seen.get('session')}"
    check.add("device", "skipped", f"no usable GPU: {why}", since)
    return False


def gpu_tests(check: Check, python: str, models: Path, work: Path) -> None:
    since = time.monotonic()
    report = work / "gpu-tests.xml"
    try:
        done = _run([python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                     *GPU_TESTS], min(check.left_s() - 150, 300), env={"APPLIANCE_TEST_MODELS": str(models)})
    except subprocess.TimeoutExpired:
        check.add("gpu tests", "failed", "did not finish in the time left", since)
        return
    if not report.is_file():
        check.add("gpu tests", "failed", f"pytest wrote no report: {_last_line(done)}", since)
        return
    for case in ET.parse(report).getroot().iter("testcase"):
        name = case.get("name")
        outcome = next(iter(case), None)
        if outcome is None:
            check.add(f"  {name}", "passed", "", since)
        elif outcome.tag == "skipped":
            check.add(f"  {name}", "skipped", (outcome.get("message") or "")[:160], since)
        else:
            check.add(f"  {name}", "failed", (outcome.get("message") or outcome.tag)[:160], since)
        since = time.monotonic()
    if done.returncode not in (0, 5) and not check.failed():
        check.add("gpu tests", "failed", _last_line(done), since)


def benchmark(check: Check, python: str, models: Path, work: Path) -> None:
    for name in BENCH_EXPORTS:
        for graph in ("on", "off"):
            since = time.monotonic()
            step = f"bench {name.removeprefix('bench-cuda-')} cuda-graph={graph}"
            if check.left_s() < 30:
                check.add(step, "skipped", "out of time", since)
                continue
            out = work / f"bench-{name}-{graph}.json"
            try:
                done = _run([python, str(BENCH), "--provider", BENCH_PROVIDER, "--package", str(models / name),
                             "--cuda-graph", graph, "--tokens", "64", "--repeat", "1", "--concurrency", "8",
                             "--skip", "genai", "optimum", "torch", "--json", str(out)],
                            min(check.left_s(), 150))
            except subprocess.TimeoutExpired:
                check.add(step, "failed", "did not finish in the time left", since)
                continue
            if done.returncode != 0 or not out.is_file():
                reason = next((line for line in done.stdout.splitlines() if line.startswith("not measured:")), None)
                check.add(step, "failed", (reason or _last_line(done))[:200], since)
                continue
            check.add(step, "figure", summarize(json.loads(out.read_text())), since)


def summarize(figures: dict) -> str:
    """bench_engine's JSON as one line: tokens/s at batch 1 and 8 streams, time to first token."""
    def get(key):
        value = figures.get(key)
        return f"{value:.0f}" if isinstance(value, (int, float)) else "?"
    return (f"batch-1 {get('decode_tokens_per_s_batch1')} tok/s, 8 streams {get('aggregate_tokens_per_s_8')} tok/s, "
            f"TTFT {get('ttft_ms_batch1')} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", type=Path, help="install from this wheelhouse when this Python lacks CUDA")
    parser.add_argument("--packages", type=Path, help="packages made by --make-packages on a CPU host")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "gpu-check")
    parser.add_argument("--budget-s", type=float, default=450, help="the whole check's time (default 7.5 min)")
    parser.add_argument("--make-packages", type=Path, metavar="DIR", help="only export the packages into DIR")
    args = parser.parse_args(argv)
    for flag, path in (("--wheelhouse", args.wheelhouse), ("--packages", args.packages)):
        if path is not None and not path.is_dir():
            parser.error(f"{flag}: {path} is not a folder")
    if args.make_packages:
        try:
            made = make_packages(args.make_packages)
        except (ImportError, RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"gpu-check: {exc}", file=sys.stderr)
            return 1
        size_mb = sum(p.stat().st_size for p in args.make_packages.rglob("*") if p.is_file()) / 1e6
        print(f"wrote {args.make_packages}: {', '.join(made)} ({size_mb:.0f} MB)")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    check = Check(args.budget_s)
    python = environment(check, args.wheelhouse, args.work / "venv")
    models = packages(check, args.packages, args.work / "packages") if python else None
    if python and models and device(check, python, models):
        gpu_tests(check, python, models, args.work)
        benchmark(check, python, models, args.work)
    print(check.table())
    total = time.monotonic() - check.started
    print(f"gpu-check: {'FAILED' if check.failed() else 'ok'} in {total:.0f} s")
    return 1 if check.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
