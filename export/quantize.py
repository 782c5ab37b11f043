"""Quantization of a finished fp32 graph with onnxruntime's own tools.

Weight-only MatMulNBits (int8 and int4) is the default: all-MiniLM-L6-v2 kept 0.9988 mean cosine
at int8 this way against 0.992 for per-channel dynamic int8, on sentences it was not tuned on
(benchmarks/export_sizes.py --minilm). Embedding tables (Gather) go to int8 too, so the package
shrinks where the weights do. At int4 the MatMuls that hurt most stay at int8, found by the
sensitivity pass (export/sensitivity.py).

The recipe that was applied is returned for the manifest: defaults are not recipes, so every
setting that changes the numbers is written down, and so is which node got which precision.
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from export import sensitivity
from export.calibration import FeedReader, graph_feeds, read_calibration_texts
from export.source import ExportError
from export.validation_texts import SENTENCES

# At int4, unless told otherwise, keep MatMuls at int8 until the graph keeps this mean cosine
# to the fp32 graph over the built-in validation texts.
DEFAULT_MIN_COSINE = 0.99
WEIGHT_ONLY = ("rtn", "k_quant", "hqq", "gptq")
# gptq calibrates the whole graph at once and ignores excluded nodes; the others take them.
MIXABLE = ("rtn", "k_quant", "hqq")


@dataclass(frozen=True)
class QuantRecipe:
    """What the quantizer is asked to do; export/recipe.py checks it against what each backend honours."""

    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = True
    # Weight-only (MatMulNBits): "rtn" (round to nearest), "k_quant", "hqq" (half-quadratic, no
    # data) or "gptq" (calibrated). int8 also: "dynamic" (per-channel dynamic, the old default) or
    # "static" (QDQ per-channel, activations calibrated).
    method: str = "rtn"
    calibration_file: Optional[Path] = None
    embeddings: str = "int8"  # "int8": Gather tables quantized (quantize_dynamic); "fp32": kept
    keep_sensitive: Optional[int] = None
    min_cosine: Optional[float] = None
    # Builder int4: a second graph for prefill (export/prefill_graph.py), at this MatMulNBits
    # accuracy level, or with int8 weights and per-token int8 activations.
    prefill_accuracy_level: Optional[int] = None
    prefill_int8: bool = False

    def as_record(self, bits: int, tool: str) -> dict:
        record = {"method": self.method, "op": "MatMulNBits", "bits": bits, "block_size": self.block_size,
                  "accuracy_level": self.accuracy_level, "symmetric": self.symmetric, "tool": tool}
        if self.calibration_file is not None:
            record["calibration_file"] = self.calibration_file.name
        return record


def quantize(fp32_path: Path, out_path: Path, precision: str, recipe: QuantRecipe,
             tokenizer_path: Optional[Path] = None) -> dict:
    """Writes the graph at `precision` to out_path; returns the recipe record for the manifest.

    tokenizer_path turns texts into model inputs (calibration and the sensitivity pass).
    """
    external = _has_external_data(fp32_path)
    if precision == "fp32":
        if external:
            raise ExportError("graphs over 2 GB are not handled by the optimum backend yet; use the builder")
        shutil.copy2(fp32_path, out_path)
        return {}
    if precision == "fp16":
        return _fp16(fp32_path, out_path)
    if recipe.method == "dynamic":
        record = _dynamic(fp32_path, out_path, recipe, external)
    elif recipe.method == "static":
        record = _static(fp32_path, out_path, recipe, _feeds(fp32_path, tokenizer_path, recipe), external)
    else:
        record = _weight_only_package(fp32_path, out_path, 4 if precision == "int4" else 8, recipe,
                                      tokenizer_path, external)
    if recipe.embeddings == "int8" and recipe.method != "dynamic":
        _quantize_embeddings(out_path, external)
    record["embeddings"] = _embeddings_record(recipe)
    return record


def _feeds(fp32_path: Path, tokenizer_path: Optional[Path], recipe: QuantRecipe, calibrating: bool = True):
    """Graph inputs from the operator's calibration file, else the built-in validation texts."""
    if tokenizer_path is None:
        raise ExportError("the exported graph came without a tokenizer.json to turn texts into inputs")
    if not calibrating:
        texts = SENTENCES[::2]  # every other one, English and Chinese: a ranking, at half the cost
    else:
        texts = read_calibration_texts(recipe.calibration_file) if recipe.calibration_file else SENTENCES
    return graph_feeds(fp32_path, tokenizer_path, texts)


def _weight_only_package(fp32_path: Path, out_path: Path, bits: int, recipe: QuantRecipe,
                         tokenizer_path: Optional[Path], external: bool) -> dict:
    import onnx

    record = recipe.as_record(bits, "onnxruntime.quantization.MatMulNBitsQuantizer")
    fp32 = onnx.load(str(fp32_path))
    reader = FeedReader(_feeds(fp32_path, tokenizer_path, recipe)) if recipe.method == "gptq" else None
    nodes = sensitivity.quantizable_matmuls(fp32)
    kept: list[str] = []
    if recipe.method in MIXABLE and not external:
        # Measured on the built-in texts against the fp32 graph, whatever calibrates.
        scorer = sensitivity.Scorer(fp32, _feeds(fp32_path, tokenizer_path, recipe, calibrating=False))
        table = sensitivity.measure(scorer, nodes, lambda node: weight_only(
            copy.deepcopy(fp32), bits, recipe, [n for n in nodes if n != node], None))
        rule, kept, tried = sensitivity.choose([row["node"] for row in table], recipe.keep_sensitive,
                                               _min_cosine(recipe, bits),
                                               lambda keep: scorer(mixed(fp32, bits, recipe, keep)))
        record["sensitivity"] = {"measure": scorer.description, "nodes": table}
        record["mixed_precision"] = {"rule": rule, "kept_precision": kept_precision(bits), "kept": len(kept),
                                     "tried": tried}
    model = mixed(fp32, bits, recipe, kept, reader)
    record["nodes"] = {name: (kept_precision(bits) if name in kept else f"int{bits}") for name in nodes}
    onnx.save(model, str(out_path), save_as_external_data=external,
              location=out_path.name + ".data" if external else None)
    return record


def _min_cosine(recipe: QuantRecipe, bits: int) -> Optional[float]:
    if recipe.min_cosine is not None or recipe.keep_sensitive is not None:
        return recipe.min_cosine
    return DEFAULT_MIN_COSINE if bits == 4 else None


def kept_precision(bits: int) -> str:
    """Where a MatMul is kept from the requested precision: int4 keeps it at int8, int8 at fp32."""
    return "int8" if bits == 4 else "fp32"


def mixed(fp32_model, bits: int, recipe: QuantRecipe, kept: list[str], reader=None):
    """fp32_model (not modified) with every MatMul at `bits` but `kept`, which go one step up."""
    model = weight_only(copy.deepcopy(fp32_model), bits, recipe, kept, reader)
    if kept and bits == 4:
        # What the first pass left are exactly the kept MatMuls (it takes every constant weight).
        model = weight_only(model, 8, replace(recipe, method="rtn"), [], None)
    return model


def weight_only(model, bits: int, recipe: QuantRecipe, exclude: list[str], reader):
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    # It logs a line for every node it skips: thousands per pass, and the sensitivity pass makes dozens.
    logging.getLogger(nbits.__name__).setLevel(logging.WARNING)

    algo = None  # rtn: the quantizer's default (round to nearest, honouring is_symmetric)
    if recipe.method == "k_quant":
        algo = nbits.KQuantWeightOnlyQuantConfig()
    elif recipe.method == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=bits)
    elif recipe.method == "gptq":
        algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=recipe.block_size,
                                               perchannel=False)
    quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=recipe.block_size,
                                           is_symmetric=recipe.symmetric, accuracy_level=recipe.accuracy_level,
                                           nodes_to_exclude=exclude, algo_config=algo)
    quantizer.process()
    if recipe.method == "hqq":
        # HQQ writes its nodes without an accuracy level; it is how the kernel computes, not how
        # the weights were found, so setting it afterwards gives what the recipe says.
        _set_accuracy_level(quantizer.model.model.graph, recipe.accuracy_level)
    model = quantizer.model.model
    if not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        # k_quant and gptq write MatMulNBits without importing its domain; the embeddings pass's
        # shape inference needs it.
        import onnx

        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return model


def _dynamic(fp32_path: Path, out_path: Path, recipe: QuantRecipe, external: bool) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gather"] if recipe.embeddings == "int8" else ["MatMul"]
    quantize_dynamic(str(fp32_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=ops, use_external_data_format=external)
    return {"method": "dynamic", "weight_type": "QInt8", "per_channel": True,
            "tool": "onnxruntime.quantization.quantize_dynamic"}


def _static(fp32_path: Path, out_path: Path, recipe: QuantRecipe, feeds: list[dict], external: bool) -> dict:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(str(fp32_path), str(out_path), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=["MatMul"], per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=external, extra_options={"ActivationSymmetric": False})
    record = {"method": "static", "format": "QDQ", "weight_type": "QInt8", "activation_type": "QInt8",
              "per_channel": True, "calibration": "MinMax", "calibration_texts": len(feeds),
              "tool": "onnxruntime.quantization.quantize_static"}
    record["calibration_file"] = recipe.calibration_file.name if recipe.calibration_file else "built-in validation texts"
    return record


def _quantize_embeddings(model_path: Path, external: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMulNBits' Gather counterpart (GatherBlockQuantized) takes 4 bits only, which cost
    # MiniLM 0.006 of mean cosine; int8 rows dequantized after the Gather cost it nothing measurable.
    quantize_dynamic(str(model_path), str(model_path), op_types_to_quantize=["Gather"], weight_type=QuantType.QInt8,
                     use_external_data_format=external)


def _embeddings_record(recipe: QuantRecipe) -> dict:
    if recipe.embeddings == "fp32":
        return {"precision": "fp32"}
    return {"precision": "int8", "op": "Gather", "tool": "onnxruntime.quantization.quantize_dynamic"}


def _fp16(fp32_path: Path, out_path: Path) -> dict:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return {"method": "cast", "keep_io_types": True, "tool": "onnxruntime.transformers.float16"}


def _set_accuracy_level(graph, level: int) -> None:
    import onnx

    for node in graph.node:
        if node.op_type == "MatMulNBits":
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", level)])


def _has_external_data(model_path: Path) -> bool:
    """Optimum writes weights beside graphs over protobuf's 2 GB limit."""
    return any(model_path.parent.glob(model_path.name + "*data"))
