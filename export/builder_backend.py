"""Decoder LLMs through the onnxruntime-genai model builder (fused GQA graphs, MatMulNBits int4).

We drive the builder's documented command line in a subprocess: it keeps the builder's global
state and memory out of our process, and its output is the fused graph the engine's shared-KV
fast path is built for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from appliance.model_package import KVLayout
from export.source import ExportError, ModelSource

# model_type values the genai 0.15 builder turns into GQA graphs that our runner serves.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo")

BUILDER_PRECISIONS = {"fp32": "fp32", "fp16": "fp16", "int8": "int8", "int4": "int4"}


@dataclass(frozen=True)
class QuantRecipe:
    """Weight-only MatMulNBits settings for int4 / int8 (RTN)."""

    block_size: int = 32
    accuracy_level: int = 4
    symmetric: bool = True

    def as_record(self, precision: str) -> dict:
        if precision not in ("int4", "int8"):
            return {}
        return {"method": "rtn", "op": "MatMulNBits", "bits": 4 if precision == "int4" else 8,
                "block_size": self.block_size, "accuracy_level": self.accuracy_level,
                "symmetric": self.symmetric, "tool": "onnxruntime_genai.models.builder"}


@dataclass(frozen=True)
class BuilderResult:
    model_file: str
    kv_layout: KVLayout
    context_length: int
    vocab_size: int
    eos_token_ids: list[int]
    bos_token_id: int | None
    pad_token_id: int | None


def build(source: ModelSource, staging: Path, precision: str, target: str, recipe: QuantRecipe,
          cache_dir: Path, log_path: Path) -> BuilderResult:
    if source.model_type not in SUPPORTED_MODEL_TYPES:
        raise ExportError(f"the builder backend does not support {source.model_type or 'this model'}; "
                          f"it supports: {', '.join(SUPPORTED_MODEL_TYPES)}")
    if precision == "fp16" and target == "cpu":
        raise ExportError("fp16 decoders are for GPU targets; use --target cuda, or fp32/int8/int4 for cpu")
    provider = "cpu" if target == "cpu" else "cuda"
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source.path), "-o", str(staging),
               "-p", BUILDER_PRECISIONS[precision], "-e", provider, "-c", str(cache_dir)]
    if precision in ("int4", "int8"):
        command += ["--extra_options", f"block_size={recipe.block_size}", f"accuracy_level={recipe.accuracy_level}",
                    f"is_symmetric={str(recipe.symmetric).lower()}", "hf_token=false"]
    else:
        command += ["--extra_options", "hf_token=false"]
    with log_path.open("w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"the model builder failed (exit {done.returncode}): {tail[0][:300]}")
    return _read_genai_config(staging / "genai_config.json")


def _ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _read_genai_config(path: Path) -> BuilderResult:
    model = json.loads(path.read_text())["model"]
    decoder = model["decoder"]
    inputs, outputs = decoder["inputs"], decoder["outputs"]
    layout = KVLayout(
        num_layers=decoder["num_hidden_layers"],
        num_kv_heads=decoder["num_key_value_heads"],
        head_dim=decoder["head_size"],
        past_key=inputs["past_key_names"],
        past_value=inputs["past_value_names"],
        present_key=outputs["present_key_names"],
        present_value=outputs["present_value_names"],
        dtype="float32",
        shared_buffer=True,
    )
    return BuilderResult(
        model_file=decoder["filename"],
        kv_layout=layout,
        context_length=model["context_length"],
        vocab_size=model["vocab_size"],
        eos_token_ids=_ids(model.get("eos_token_id")),
        bos_token_id=model.get("bos_token_id"),
        pad_token_id=model.get("pad_token_id"),
    )
