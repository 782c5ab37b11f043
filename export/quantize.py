"""Weight quantization of a finished fp32 graph with onnxruntime's own tools.

The recipe that was applied is returned for the manifest: defaults are not recipes, so every
setting that changes the numbers is written down.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from export.source import ExportError


@dataclass(frozen=True)
class QuantRecipe:
    """MatMulNBits settings for int4 (and the builder's int8); int8 dynamic ignores them."""

    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = True
    # "rtn" (round to nearest), "k_quant", "hqq" (half-quadratic, no data) or "gptq" (calibrated);
    # export/recipe.py says which backend implements which, and what each does with the rest.
    method: str = "rtn"
    calibration_file: Optional[Path] = None

    def as_record(self, bits: int, tool: str) -> dict:
        record = {"method": self.method, "op": "MatMulNBits", "bits": bits, "block_size": self.block_size,
                  "accuracy_level": self.accuracy_level, "symmetric": self.symmetric, "tool": tool}
        if self.calibration_file is not None:
            record["calibration_file"] = self.calibration_file.name
        return record


def quantize(fp32_path: Path, out_path: Path, precision: str, recipe: QuantRecipe,
             tokenizer_path: Optional[Path] = None) -> dict:
    """Writes the graph at `precision` to out_path; returns the recipe record for the manifest.

    tokenizer_path turns the recipe's calibration file into model inputs (gptq only).
    """
    external = _has_external_data(fp32_path)
    if precision == "fp32":
        if external:
            raise ExportError("graphs over 2 GB are not handled by the optimum backend yet; use the builder")
        shutil.copy2(fp32_path, out_path)
        return {}
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel weights: all-MiniLM-L6-v2 kept 0.992 mean cosine this way, 0.953 per-tensor.
        quantize_dynamic(str(fp32_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=external)
        return {"method": "dynamic", "weight_type": "QInt8", "per_channel": True,
                "tool": "onnxruntime.quantization.quantize_dynamic"}
    if precision == "int4":
        _int4(fp32_path, out_path, recipe, tokenizer_path)
        return recipe.as_record(4, "onnxruntime.quantization.MatMulNBitsQuantizer")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))
    return {"method": "cast", "keep_io_types": True, "tool": "onnxruntime.transformers.float16"}


def _int4(fp32_path: Path, out_path: Path, recipe: QuantRecipe, tokenizer_path: Optional[Path]) -> None:
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    algo = None  # rtn: the quantizer's default (round to nearest, honouring is_symmetric)
    if recipe.method == "k_quant":
        algo = nbits.KQuantWeightOnlyQuantConfig()
    elif recipe.method == "hqq":
        algo = nbits.HQQWeightOnlyQuantConfig(block_size=recipe.block_size, bits=4)
    elif recipe.method == "gptq":
        if recipe.calibration_file is None or tokenizer_path is None:
            raise ExportError("--quant-method gptq needs --calibration-file (one text per line)")
        reader = TextCalibrationReader(fp32_path, tokenizer_path, recipe.calibration_file)
        algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=reader, block_size=recipe.block_size,
                                               perchannel=False)
    quantizer = nbits.MatMulNBitsQuantizer(str(fp32_path), bits=4, block_size=recipe.block_size,
                                           is_symmetric=recipe.symmetric, accuracy_level=recipe.accuracy_level,
                                           algo_config=algo)
    quantizer.process()
    if recipe.method == "hqq":
        # HQQ writes its nodes without an accuracy level; it is how the kernel computes, not how
        # the weights were found, so setting it afterwards gives what the recipe says.
        _set_accuracy_level(quantizer.model.model.graph, recipe.accuracy_level)
    quantizer.model.save_model_to_file(str(out_path), use_external_data_format=_has_external_data(fp32_path))


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


MAX_CALIBRATION_TEXTS = 128
MAX_CALIBRATION_TOKENS = 256


def _read_calibration_texts(path: Path) -> list[str]:
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"calibration file {path}: cannot read it ({exc.__class__.__name__})") from None
    if not texts:
        raise ExportError(f"calibration file {path} holds no text lines")
    return texts[:MAX_CALIBRATION_TEXTS]


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class TextCalibrationReader(_calibration_reader_base()):
    """Feeds one tokenized line of the operator's text file per call, shaped for the graph's inputs
    (decoder graphs get empty past KV tensors and positions from 0)."""

    def __init__(self, model_path: Path, tokenizer_path: Path, text_file: Path):
        super().__init__()
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_padding()
        tokenizer.enable_truncation(MAX_CALIBRATION_TOKENS)
        self._feeds = []
        for text in _read_calibration_texts(text_file):
            ids = np.asarray([tokenizer.encode(text).ids or [0]], np.int64)  # [1, S]
            feed = {}
            for spec in session.get_inputs():
                if spec.name == "input_ids":
                    feed[spec.name] = ids
                elif spec.name in ("attention_mask",):
                    feed[spec.name] = np.ones_like(ids)
                elif spec.name == "token_type_ids":
                    feed[spec.name] = np.zeros_like(ids)
                elif spec.name == "position_ids":
                    feed[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None, :]
                elif spec.name.startswith("past_key_values."):
                    dtype = np.float16 if "float16" in spec.type else np.float32
                    feed[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype)  # [1, H, 0, D]
                else:
                    raise ExportError(f"cannot calibrate a graph with input {spec.name}")
            self._feeds.append(feed)
        self._next = iter(self._feeds)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._feeds)
