"""Export time and package size per precision for the SmolLM-135M architecture.

    .venv/bin/python benchmarks/export_sizes.py [--work /tmp/export-bench]

Random weights in SmolLM-135M's shape (30 layers, hidden 576, 9 query / 3 KV heads, MLP 1536,
vocab 32000), exported by `appliance-export` at each CPU precision in one run, so the figures
compare side by side. Times include validation against PyTorch (32 greedy tokens); the quality
columns are the figures the int8 / int4 floors hold (export/validate.py DECODER_THRESHOLDS).
The encoder recipes on the real all-MiniLM-L6-v2 are benchmarks/export/minilm_recipes.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RECIPES = [
    ("fp32", []),
    ("int8", []),
    ("int4 block 32", ["--block-size", "32"]),
    ("int4 block 128", ["--block-size", "128"]),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/export-bench"))
    args = parser.parse_args()
    from export.tiny_models import make_decoder

    source = args.work / "src" / "smollm-135m"
    if not (source / "config.json").is_file():
        make_decoder(source, "llama", hidden_size=576, layers=30, heads=9, kv_heads=3, context_length=2048,
                     intermediate_size=1536, vocab_size=32000)
    rows = []
    for label, extra in RECIPES:
        precision = label.split()[0]
        out = args.work / "packages" / label.replace(" ", "-")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "export.cli", str(source), "--output", str(out), "--precision",
                               precision, *extra, "--json", "--force"], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            print(f"{label}: export failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        summary = json.loads(done.stdout)
        rows.append((label, elapsed, summary["timings"], summary["package_bytes"], summary["validation"]))
    print("SmolLM-135M architecture (random weights), appliance-export on this host:")
    print(f"{'recipe':16} {'total s':>8} {'export s':>9} {'validate s':>11} {'package MB':>11} "
          f"{'logit cos':>10} {'top-5':>6} {'KL mean':>8} {'greedy agreement':>17} {'batch invariant':>16} passed")
    for label, elapsed, timings, size, figures in rows:
        print(f"{label:16} {elapsed:8.1f} {timings['export']:9.1f} {timings['validate']:11.1f} {size / 1e6:11.1f} "
              f"{figures['logits_cosine_mean']:10.4f} {figures['top5_overlap']:6.2f} {figures['kl_mean']:8.4f} "
              f"{figures['greedy_token_agreement']:17.2f} {str(figures['batch_invariance']['holds']):>16} "
              f"{figures['passed']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
