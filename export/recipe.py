"""Which export options each backend implements, checked before any work starts.

An option that a backend would silently ignore is refused, naming the option and the backend
(exit code 2), rather than written into a manifest that it did not shape. What each method does
with the other settings was read off the graphs it writes (MatMulNBits bits, block_size,
accuracy_level and zero points), with onnxruntime 1.32 and onnxruntime-genai 0.15.2:

- builder int4: rtn and k_quant take the block size and accuracy level; rtn takes --asymmetric,
  k_quant writes zero points (asymmetric) whatever is asked.
- builder int8: rtn only; with any other method genai 0.15.2 writes 4-bit weights. The builder
  shares tied embeddings with the LM head by itself (its shared_embeddings option follows the
  config). Its int4 and int8 take the sensitivity pass's mixed precision, measured on an fp32
  build of the same graph (export/decoder_sensitivity.py).
- optimum int4 (onnxruntime's MatMulNBitsQuantizer): rtn and gptq take all three settings (gptq
  also a calibration file, which it needs); k_quant and hqq always write zero points; hqq writes
  no accuracy level, so quantize.py sets it on the nodes afterwards. All but gptq (which ignores
  excluded nodes) take the sensitivity pass's mixed precision.
- optimum int8: rtn (weight-only MatMulNBits, 8 bits) takes the settings above and mixed
  precision; dynamic (quantize_dynamic, per-channel, the old default) and static (QDQ,
  per-channel, calibrated on --calibration-file or the built-in texts) take none of them.
- every fp32 / fp16 export takes none.
- --prefill-accuracy-level and --prefill-int8 (a second graph for prefill, export/prefill_graph.py):
  builder int4 only, whose graphs the shared-KV runner serves with one set of KV buffers for both
  graphs; one of the two.

The exporter compares the recipe with the written graph afterwards (cli._check_recipe), so a
library that changes what it honours fails the export instead of the manifest lying.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from export.quantize import QuantRecipe
from export.source import ExportError

DEFAULT_METHOD = "rtn"
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4


class BadOptions(ExportError):
    """The options ask for something that is not implemented as asked (exit code 2)."""


@dataclass(frozen=True)
class Method:
    # None: follows --asymmetric; True / False: what the method always writes.
    symmetric: Optional[bool] = None
    calibration: str = "none"  # "none", "optional" (built-in texts otherwise) or "required"
    blocks: bool = True  # MatMulNBits: takes --block-size, --accuracy-level, --asymmetric
    mixable: bool = True  # takes --keep-sensitive / --min-cosine
    embeddings: bool = True  # takes --embeddings
    prefill: bool = False  # takes --prefill-accuracy-level or --prefill-int8


# (backend, precision) -> the methods it implements there.
METHODS = {
    ("builder", "int4"): {"rtn": Method(embeddings=False, prefill=True),
                          "k_quant": Method(symmetric=False, embeddings=False, prefill=True)},
    ("builder", "int8"): {"rtn": Method(embeddings=False)},
    ("optimum", "int4"): {"rtn": Method(), "k_quant": Method(symmetric=False), "hqq": Method(symmetric=False),
                          "gptq": Method(calibration="required", mixable=False)},
    ("optimum", "int8"): {"rtn": Method(), "dynamic": Method(blocks=False, mixable=False),
                          "static": Method(calibration="optional", blocks=False, mixable=False)},
}


@dataclass(frozen=True)
class QuantOptions:
    """The quantization options as given on the command line; None (False) where not given."""

    method: Optional[str] = None
    block_size: Optional[int] = None
    accuracy_level: Optional[int] = None
    asymmetric: bool = False
    calibration_file: Optional[Path] = None
    keep_sensitive: Optional[int] = None
    min_cosine: Optional[float] = None
    embeddings: Optional[str] = None
    prefill_accuracy_level: Optional[int] = None
    prefill_int8: bool = False

    def flags(self) -> list[tuple[str, object, str]]:
        """(flag, value, the Method property that must allow it)."""
        return [("--quant-method", self.method, ""), ("--block-size", self.block_size, "blocks"),
                ("--accuracy-level", self.accuracy_level, "blocks"), ("--asymmetric", self.asymmetric or None, "blocks"),
                ("--calibration-file", self.calibration_file, "calibration"),
                ("--keep-sensitive", self.keep_sensitive, "mixable"), ("--min-cosine", self.min_cosine, "mixable"),
                ("--embeddings", self.embeddings, "embeddings"),
                ("--prefill-accuracy-level", self.prefill_accuracy_level, "prefill"),
                ("--prefill-int8", self.prefill_int8 or None, "prefill")]

    def given(self) -> list[str]:
        return [flag for flag, value, _ in self.flags() if value is not None]


def runs_on_gpu_only(precision: str) -> bool:
    """fp16 graphs need a GPU: ONNX Runtime's CPU provider lacks fp16 kernels for most of their ops."""
    return precision == "fp16"


def check_precision_target(precision: str, target: str) -> None:
    if runs_on_gpu_only(precision) and target == "cpu":
        raise BadOptions("--precision fp16 is for GPU targets (--target cuda or tensorrt); "
                         "for cpu use fp32, int8 or int4")


def resolve(backend: str, precision: str, options: QuantOptions) -> QuantRecipe:
    """The recipe that will run, or BadOptions naming the first option the backend would not honour."""
    methods = METHODS.get((backend, precision))
    if methods is None:
        given = options.given()
        if given:
            raise BadOptions(f"{given[0]} does not apply to --precision {precision} on the {backend} backend: "
                             "it runs no quantization")
        return QuantRecipe()
    name = options.method or DEFAULT_METHOD
    method = methods.get(name)
    if method is None:
        raise BadOptions(f"--quant-method {name} is not implemented by the {backend} backend for --precision "
                         f"{precision} (it implements {', '.join(methods)})")
    for flag, value, needs in options.flags():
        allowed = method.calibration != "none" if needs == "calibration" else getattr(method, needs, True)
        if value is not None and not allowed:
            raise BadOptions(f"{flag} is not used by --quant-method {name} on the {backend} backend "
                             f"for --precision {precision}" + _why(needs, backend))
    if method.calibration == "required" and options.calibration_file is None:
        raise BadOptions(f"--quant-method {name} needs --calibration-file (one text per line)")
    if options.calibration_file is not None and not options.calibration_file.is_file():
        raise BadOptions(f"--calibration-file {options.calibration_file} does not exist")
    if options.prefill_accuracy_level is not None and options.prefill_int8:
        raise BadOptions("--prefill-accuracy-level and --prefill-int8 both choose the prefill graph; give one")
    if options.keep_sensitive is not None and options.min_cosine is not None:
        raise BadOptions("--keep-sensitive and --min-cosine both choose the kept MatMuls; give one")
    if options.min_cosine is not None and not 0.0 < options.min_cosine <= 1.0:
        raise BadOptions(f"--min-cosine {options.min_cosine} is not a cosine in (0, 1]")
    if options.keep_sensitive is not None and options.keep_sensitive < 0:
        raise BadOptions(f"--keep-sensitive {options.keep_sensitive} is not a count of MatMuls")
    symmetric = not options.asymmetric if method.symmetric is None else method.symmetric
    return QuantRecipe(block_size=options.block_size or DEFAULT_BLOCK_SIZE,
                       accuracy_level=options.accuracy_level or DEFAULT_ACCURACY_LEVEL,
                       symmetric=symmetric, method=name, calibration_file=options.calibration_file,
                       embeddings=options.embeddings or ("int8" if method.embeddings else "fp32"),
                       keep_sensitive=options.keep_sensitive, min_cosine=options.min_cosine,
                       prefill_accuracy_level=options.prefill_accuracy_level, prefill_int8=options.prefill_int8)


def _why(needs: str, backend: str) -> str:
    if backend == "builder" and needs == "embeddings":
        return " (the builder shares tied embeddings itself)"
    return {"calibration": " (gptq and static calibrate)", "mixable": " (rtn, k_quant and hqq mix precisions)",
            "blocks": " (it writes no MatMulNBits blocks)",
            "prefill": " (a prefill graph is written for builder int4 packages)"}.get(needs, "")
