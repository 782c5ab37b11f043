"""Decoder LLMs through the onnxruntime-genai model builder (fused GQA graphs, MatMulNBits int4).

We drive the builder's documented command line in a subprocess: it keeps the builder's global
state and memory out of our process, and its output is the fused graph the engine's shared-KV
fast path is built for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from appliance.model_package import KVLayout, PrefillGraph
from export.backend_fields import BackendFields
from export.last_logits import slice_to_last_position
from export.prefill_graph import INT8_RECIPE, weight_bytes, write_int8_prefill_graph, write_prefill_graph
from export.quantize import QuantRecipe
from export.source import ExportError, ModelSource

# model_type values the genai 0.15 builder turns into GQA graphs that our runner serves.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo")
TOOL = "onnxruntime_genai.models.builder"


def build(source: ModelSource, staging: Path, precision: str, target: str, recipe: QuantRecipe,
          cache_dir: Path, log_path: Path, phases, exclude: tuple[str, ...] = (), finish=None) -> BackendFields:
    """Runs the builder into staging; returns the manifest fields it determines. The model type,
    precision, target and recipe were checked before (cli.choose_backend, export/recipe.py).
    `exclude` names MatMuls the builder leaves unquantized, and finish(model_path) rewrites its graph
    before anything else reads it (export/decoder_sensitivity.py raises the excluded ones to int8)."""
    provider = "cpu" if target == "cpu" else "cuda"
    options = ["hf_token=false"]
    if precision in ("int4", "int8"):
        options += [f"block_size={recipe.block_size}", f"accuracy_level={recipe.accuracy_level}",
                    f"is_symmetric={str(recipe.symmetric).lower()}"]
        # The builder's "default" is RTN; naming rtn explicitly makes genai 0.15.2 write 4-bit
        # weights even for int8, so only other methods are passed on.
        if recipe.method != "rtn":
            options.append(f"algo_config={recipe.method}")
        if exclude:
            options.append("nodes_to_exclude=" + ",".join(exclude))
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source.path), "-o", str(staging),
               "-p", precision, "-e", provider, "-c", str(cache_dir), "--extra_options", *options]
    _run_with_progress(command, log_path, phases, layers=int(source.config.get("num_hidden_layers", 0)))
    quantization = recipe.as_record(4 if precision == "int4" else 8, TOOL) if precision in ("int4", "int8") else {}
    fields = _read_genai_config(staging / "genai_config.json", quantization)
    if finish is not None:
        finish(staging / fields.model_file)
    # Prefill needs the last position's logits only: the LM head runs on that row alone.
    slice_to_last_position(staging / fields.model_file)
    fields.logits = "last"
    if recipe.prefill_accuracy_level is not None or recipe.prefill_int8:
        fields.prefill_graph = _prefill_graph(staging, fields, recipe)
    return fields


def _prefill_graph(staging: Path, fields: BackendFields, recipe: QuantRecipe) -> PrefillGraph:
    if recipe.prefill_int8:
        name, quantization = write_int8_prefill_graph(staging, fields.model_file), INT8_RECIPE
    else:
        level = recipe.prefill_accuracy_level
        name, quantization = write_prefill_graph(staging, fields.model_file, level), {**fields.quantization,
                                                                                      "accuracy_level": level}
    return PrefillGraph(file=name, quantization=quantization, weight_bytes=weight_bytes(staging, name))


def _run_with_progress(command: list[str], log_path: Path, phases, layers: int) -> None:
    """Runs the builder, advancing the export bar on each "Reading layer" line it prints."""
    phases.set_total(layers + 3)  # embedding, layers, final norm, LM head
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            log.write(line)
            if line.startswith("Reading "):
                phases.advance()
        code = process.wait()
    if code != 0:
        lines = [line for line in log_path.read_text().strip().splitlines() if line.strip()]
        raise ExportError(f"the model builder failed (exit {code}): {(lines[-1] if lines else 'no output')[:300]}")


def _ids(value) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _read_genai_config(path: Path, quantization: dict) -> BackendFields:
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
        dtype="float32",  # corrected from the graph's signature by the caller
        shared_buffer=True,
    )
    return BackendFields(model_file=decoder["filename"], kv_layout=layout, context_length=model["context_length"],
                         vocab_size=model["vocab_size"], quantization=quantization,
                         eos_token_ids=_ids(model.get("eos_token_id")), bos_token_id=model.get("bos_token_id"),
                         pad_token_id=model.get("pad_token_id"))
