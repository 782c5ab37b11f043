"""Which export options each backend implements, checked before any work starts.

An option that a backend would silently ignore is refused, naming the option and the backend
(exit code 2), rather than written into a manifest that it did not shape. What each method does
with the other settings was read off the graphs it writes (MatMulNBits bits, block_size,
accuracy_level and zero points), with onnxruntime 1.32 and onnxruntime-genai 0.15.2:

- builder int4: rtn and k_quant take the block size and accuracy level; rtn takes --asymmetric,
  k_quant writes zero points (asymmetric) whatever is asked.
- builder int8: rtn only; with any other method genai 0.15.2 writes 4-bit weights.
- optimum int4 (onnxruntime's MatMulNBitsQuantizer): rtn and gptq take all three settings (gptq
  also a calibration file, which it needs); k_quant and hqq always write zero points; hqq writes
  no accuracy level, so quantize.py sets it on the nodes afterwards.
- optimum int8 (quantize_dynamic, per-channel symmetric) and every fp32 / fp16 export take none.

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
    calibrated: bool = False


# (backend, precision) -> the weight-only methods it implements there.
METHODS = {
    ("builder", "int4"): {"rtn": Method(), "k_quant": Method(symmetric=False)},
    ("builder", "int8"): {"rtn": Method()},
    ("optimum", "int4"): {"rtn": Method(), "k_quant": Method(symmetric=False), "hqq": Method(symmetric=False),
                          "gptq": Method(calibrated=True)},
}


@dataclass(frozen=True)
class QuantOptions:
    """The quantization options as given on the command line; None (False) where not given."""

    method: Optional[str] = None
    block_size: Optional[int] = None
    accuracy_level: Optional[int] = None
    asymmetric: bool = False
    calibration_file: Optional[Path] = None

    def given(self) -> list[str]:
        flags = (("--quant-method", self.method), ("--block-size", self.block_size),
                 ("--accuracy-level", self.accuracy_level), ("--asymmetric", self.asymmetric or None),
                 ("--calibration-file", self.calibration_file))
        return [flag for flag, value in flags if value is not None]


def check_precision_target(precision: str, target: str) -> None:
    if precision == "fp16" and target == "cpu":
        raise BadOptions("--precision fp16 is for GPU targets (--target cuda or tensorrt); "
                         "for cpu use fp32, int8 or int4")


def resolve(backend: str, precision: str, options: QuantOptions) -> QuantRecipe:
    """The recipe that will run, or BadOptions naming the first option the backend would not honour."""
    methods = METHODS.get((backend, precision))
    if methods is None:
        given = options.given()
        if given:
            what = ("per-channel dynamic int8 (quantize_dynamic), which has no blocks, accuracy levels, "
                    "zero points or methods to choose" if precision == "int8" else "no quantization")
            raise BadOptions(f"{given[0]} does not apply to --precision {precision} on the {backend} backend: "
                             f"it runs {what}")
        return QuantRecipe()
    name = options.method or DEFAULT_METHOD
    method = methods.get(name)
    if method is None:
        raise BadOptions(f"--quant-method {name} is not implemented by the {backend} backend for --precision "
                         f"{precision} (it implements {', '.join(methods)})")
    if options.calibration_file is not None and not method.calibrated:
        raise BadOptions(f"--calibration-file is not used by --quant-method {name} on the {backend} backend "
                         "(only gptq, on the optimum backend, calibrates)")
    if method.calibrated and options.calibration_file is None:
        raise BadOptions(f"--quant-method {name} needs --calibration-file (one text per line)")
    if options.calibration_file is not None and not options.calibration_file.is_file():
        raise BadOptions(f"--calibration-file {options.calibration_file} does not exist")
    symmetric = not options.asymmetric if method.symmetric is None else method.symmetric
    return QuantRecipe(block_size=options.block_size or DEFAULT_BLOCK_SIZE,
                       accuracy_level=options.accuracy_level or DEFAULT_ACCURACY_LEVEL,
                       symmetric=symmetric, method=name, calibration_file=options.calibration_file)
