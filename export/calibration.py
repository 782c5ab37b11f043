"""Texts turned into inputs of an exported fp32 graph: for calibrating quantizers (gptq, static
int8) and for measuring one quantized node against the fp32 graph (export/sensitivity.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from export.source import ExportError

MAX_CALIBRATION_TEXTS = 128
MAX_CALIBRATION_TOKENS = 256


def read_calibration_texts(path: Path) -> list[str]:
    try:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"calibration file {path}: cannot read it ({exc.__class__.__name__})") from None
    if not texts:
        raise ExportError(f"calibration file {path} holds no text lines")
    return texts[:MAX_CALIBRATION_TEXTS]


def graph_feeds(model_path: Path, tokenizer_path: Path, texts: list[str]) -> list[dict]:
    """One feed per text, shaped for the graph's inputs (decoder graphs get empty past KV tensors
    and positions from 0)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_CALIBRATION_TOKENS)
    feeds = []
    for text in texts:
        ids = np.asarray([tokenizer.encode(text).ids or [0]], np.int64)  # [1, S]
        feed = {}
        for spec in session.get_inputs():
            if spec.name == "input_ids":
                feed[spec.name] = ids
            elif spec.name == "attention_mask":
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
        feeds.append(feed)
    return feeds


def _calibration_reader_base():
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class FeedReader(_calibration_reader_base()):
    """onnxruntime's calibration interface over prepared feeds, one per call."""

    def __init__(self, feeds: list[dict]):
        super().__init__()
        self._feeds = feeds
        self._next = iter(self._feeds)

    def get_next(self):
        return next(self._next, None)

    def rewind(self):
        self._next = iter(self._feeds)
