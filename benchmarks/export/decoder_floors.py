"""What correct and deliberately broken quantized decoders measure: the basis of the int8 / int4
floors in export/validate.py (DECODER_THRESHOLDS).

    .venv/bin/python benchmarks/export/decoder_floors.py [--work /tmp/decoder-floors] [--smollm]

Tiny random decoders of each architecture the exporter takes (and, with --smollm, one in
SmolLM-135M's shape), exported at int8 and int4 by `appliance-export --force`; then each int4 /
int8 package is broken (export/broken_quantization.py) and validated again in-process.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

FIGURES = ("logits_cosine_mean", "logits_cosine_min", "top5_overlap", "kl_mean", "kl_max")


def sources(work: Path, smollm: bool) -> dict[str, Path]:
    from export.tiny_models import make_decoder, make_gpt2

    made = {}
    for seed, name in enumerate(("llama", "qwen2", "phi3", "mistral")):
        made[name] = work / "src" / name
        if not (made[name] / "config.json").is_file():
            make_decoder(made[name], name, seed=seed)
    made["gpt2"] = work / "src" / "gpt2"
    if not (made["gpt2"] / "config.json").is_file():
        make_gpt2(made["gpt2"])
    if smollm:
        made["smollm-135m"] = work / "src" / "smollm-135m"
        if not (made["smollm-135m"] / "config.json").is_file():
            make_decoder(made["smollm-135m"], "llama", hidden_size=576, layers=30, heads=9, kv_heads=3,
                         context_length=2048, intermediate_size=1536, vocab_size=32000)
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/decoder-floors"))
    parser.add_argument("--smollm", action="store_true", help="also a decoder of SmolLM-135M's shape (minutes)")
    parser.add_argument("--only", nargs="*", help="these models only (llama, qwen2, phi3, mistral, gpt2, smollm-135m)")
    args = parser.parse_args()
    from appliance.model_package import open_package
    from export import validate
    from export.broken_quantization import FAULTS, break_graph
    from export.progress import Phases

    print(f"{'model':12} {'precision':9} {'graph':14} " + " ".join(f"{f:>18}" for f in FIGURES) + "  refused")
    for name, source in sources(args.work, args.smollm).items():
        if args.only and name not in args.only:
            continue
        for precision in ("int8", "int4"):
            package = args.work / "packages" / f"{name}-{precision}"
            shutil.rmtree(package, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "export.cli", str(source), "--output", str(package),
                            "--precision", precision, "--force"], check=True, capture_output=True)
            manifest = open_package(package)
            rows = [("as exported", manifest.validation)]
            for fault in FAULTS:
                broken = package.with_name(package.name + "-" + fault)
                shutil.rmtree(broken, ignore_errors=True)
                shutil.copytree(package, broken)
                break_graph(broken / manifest.model_file, fault)
                rows.append((fault, validate.run(source, broken, manifest, Phases(quiet=True))))
            for label, figures in rows:
                refused = bool(validate.failures(figures, manifest.task, precision))
                print(f"{name:12} {precision:9} {label:14} " + " ".join(f"{figures[f]:18.4f}" for f in FIGURES)
                      + f"  {refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
