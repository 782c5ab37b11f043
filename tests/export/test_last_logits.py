"""Builder graphs compute the LM head on the last position only; packages written before keep working."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.model_package import MANIFEST_NAME, open_package, record_files
from export.last_logits import SLICE_NAME, slice_to_last_position
from export.source import ExportError
from tests.appliance.engine.greedy import greedy_path

CPU = RuntimeOptions(("cpu",))
PROMPT = [5, 9, 13, 2, 7, 11, 3, 8, 6, 4]


def greedy(package, steps: int = 8) -> tuple[list[int], np.ndarray]:
    runner = open_decoder_runner(package, open_package(package), CPU, max_context=len(PROMPT) + steps + 1)
    return greedy_path(runner, PROMPT, steps)


def as_old_package(package, into):
    """A copy of `package` as the exporter wrote it before: logits for every position, no `logits` field."""
    shutil.copytree(package, into)
    model = onnx.load(str(into / "model.onnx"), load_external_data=False)
    graph = model.graph
    cut = next(node for node in graph.node if node.name == SLICE_NAME)
    for node in graph.node:
        node.input[:] = [cut.input[0] if name == cut.output[0] else name for name in node.input]
    graph.node.remove(cut)
    for initializer in [i for i in graph.initializer if i.name in cut.input[1:]]:
        graph.initializer.remove(initializer)
    logits = next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim[1]
    logits.Clear()
    logits.dim_param = "sequence_length"
    onnx.save(model, str(into / "model.onnx"))
    manifest = json.loads((into / MANIFEST_NAME).read_text())
    del manifest["logits"]
    next(o for o in manifest["io"]["outputs"] if o["name"] == "logits")["shape"][1] = "sequence_length"
    manifest["files"] = {name: record.model_dump() for name, record in record_files(into).items()}
    (into / MANIFEST_NAME).write_text(json.dumps(manifest))
    return into


def test_builder_packages_compute_logits_for_the_last_position_only(models_dir):
    package = models_dir / "llama"
    manifest = open_package(package)
    assert manifest.logits == "last"
    logits = next(o for o in manifest.io.outputs if o.name == "logits")
    assert logits.shape[1:] == [1, manifest.vocab_size]
    # The export's own validation still holds the fp32 package to PyTorch's greedy tokens.
    figures = manifest.validation
    assert figures["greedy_prefix_match"] == figures["greedy_tokens"] and figures["logits_rel_diff"] < 1e-3


def test_an_old_package_with_every_positions_logits_gives_the_same_tokens(models_dir, tmp_path):
    new = models_dir / "llama"
    old = as_old_package(new, tmp_path / "llama-old")
    assert open_package(old).logits == "all"
    old_tokens, old_logits = greedy(old)
    new_tokens, new_logits = greedy(new)
    assert new_tokens == old_tokens
    # The LM-head MatMul has M = 1 now, so rounding may differ; measured 0.0 on this package.
    assert np.abs(new_logits - old_logits).max() < 1e-4


def test_slicing_is_idempotent_and_needs_an_lm_head(models_dir, tmp_path):
    old = as_old_package(models_dir / "llama", tmp_path / "llama-old")
    slice_to_last_position(old / "model.onnx")
    slice_to_last_position(old / "model.onnx")
    model = onnx.load(str(old / "model.onnx"), load_external_data=False)
    assert [node.name for node in model.graph.node].count(SLICE_NAME) == 1

    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, 3]) for name in ("x", "logits")]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "no-head", values[:1], values[1:])
    onnx.save(helper.make_model(graph), str(tmp_path / "no-head.onnx"))
    with pytest.raises(ExportError, match="cannot find the LM head: logits comes from Relu"):
        slice_to_last_position(tmp_path / "no-head.onnx")
