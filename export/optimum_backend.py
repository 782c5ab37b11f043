"""Every architecture Optimum exports (decoders it knows beyond the builder's list, and all
encoders) through optimum.exporters.onnx, then onnxruntime.quantization for int8 / int4 and
onnxruntime's fp16 converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from appliance.model_package import KVLayout, Pooling
from export.backend_fields import BackendFields
from export.quantize import QuantRecipe, quantize
from export.source import ExportError, ModelSource

MODEL_FILE = "model.onnx"

OPTIMUM_TASKS = {
    "text-generation": "text-generation-with-past",
    "feature-extraction": "feature-extraction",
    "text-classification": "text-classification",
    "token-classification": "token-classification",
}


def _pooling_for(source: ModelSource, output_names: list[str]) -> Pooling:
    if "sentence_embedding" in output_names:
        # sentence-transformers models export with their pooling (and Normalize) inside the graph.
        return Pooling(mode="graph", output="sentence_embedding", normalize=False)
    config_path = source.path / "1_Pooling" / "config.json"
    mode = "mean"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        mode = "cls" if config.get("pooling_mode_cls_token") else "mean"
    return Pooling(mode=mode, output="last_hidden_state", normalize=False)


def _kv_layout(inputs: dict) -> KVLayout:
    keys = sorted(name for name in inputs if name.startswith("past_key_values.") and name.endswith(".key"))
    if not keys:
        raise ExportError("the exported decoder has no past_key_values inputs; cannot serve it incrementally")
    first = inputs[keys[0]]
    heads, head_dim = first.shape[1], first.shape[3]
    if not isinstance(heads, int) or not isinstance(head_dim, int):
        raise ExportError("the exported decoder's KV shapes are not static in heads and head size")
    return KVLayout(num_layers=len(keys), num_kv_heads=heads, head_dim=head_dim,
                    past_key="past_key_values.%d.key", past_value="past_key_values.%d.value",
                    present_key="present.%d.key", present_value="present.%d.value",
                    dtype="float16" if "float16" in first.type else "float32", shared_buffer=False)


def _eos_ids(source: ModelSource) -> list[int]:
    config = dict(source.config)
    generation = source.path / "generation_config.json"
    if generation.is_file():
        config.update({k: v for k, v in json.loads(generation.read_text()).items() if v is not None})
    eos = config.get("eos_token_id")
    return [] if eos is None else (list(eos) if isinstance(eos, list) else [eos])


def _context_length(config: dict) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return 512


def export(source: ModelSource, staging: Path, task: str, precision: str, target: str,
           recipe: QuantRecipe, work_dir: Path, phases) -> BackendFields:
    """Exports, quantizes into staging/model.onnx; returns the manifest fields it determines."""
    from optimum.exporters.onnx import main_export
    import onnxruntime as ort

    raw_dir = work_dir / "optimum"
    try:
        main_export(str(source.path), output=raw_dir, task=OPTIMUM_TASKS[task], do_validation=False,
                    local_files_only=True)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ExportError(f"Optimum cannot export {source.model_type or 'this model'} for {task}: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    for item in raw_dir.iterdir():
        if item.is_file() and item.suffix != ".onnx" and not item.name.startswith(MODEL_FILE):
            shutil.copy2(item, staging / item.name)
    phases.begin("quantize")
    tokenizer = raw_dir / "tokenizer.json"
    quantization = quantize(raw_dir / MODEL_FILE, staging / MODEL_FILE, precision, recipe,
                            tokenizer if tokenizer.is_file() else None)
    session = ort.InferenceSession(str(staging / MODEL_FILE), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    config = source.config
    fields = BackendFields(model_file=MODEL_FILE, context_length=_context_length(config),
                           vocab_size=int(config.get("vocab_size", 0)), pad_token_id=config.get("pad_token_id"),
                           quantization=quantization)
    if task == "text-generation":
        fields.kv_layout, fields.eos_token_ids = _kv_layout(inputs), _eos_ids(source)
        fields.bos_token_id = config.get("bos_token_id")
    elif task == "feature-extraction":
        fields.pooling = _pooling_for(source, list(outputs))
        fields.embedding_dim = int(outputs[fields.pooling.output].shape[-1])
    else:
        id2label = config.get("id2label") or {}
        fields.labels = [id2label.get(str(i), id2label.get(i, f"LABEL_{i}")) for i in range(len(id2label))]
    return fields
