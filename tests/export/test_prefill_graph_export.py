"""--prefill-accuracy-level: a second graph at another MatMulNBits accuracy level over the same weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.model_package import open_package
from export.graph_info import matmul_nbits_settings
from export.prefill_graph import write_prefill_graph
from export.recipe import BadOptions, QuantOptions, resolve
from export.source import ExportError
from tests.conftest import export_or_fail


def nbits_graph(folder, accuracy_level: int = 4):
    """One MatMulNBits node whose weights live in model.onnx.data, as the builder writes them."""
    weight = numpy_helper.from_array(np.zeros((8, 1, 16), np.uint8), "w")
    scales = numpy_helper.from_array(np.ones(8, np.float32), "scales")
    node = helper.make_node("MatMulNBits", ["x", "w", "scales"], ["logits"], domain="com.microsoft", K=32, N=8,
                            bits=4, block_size=32, accuracy_level=accuracy_level)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])], [weight, scales])
    onnx.save(helper.make_model(graph), str(folder / "model.onnx"), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)


def test_the_prefill_graph_rewrites_the_accuracy_level_and_shares_the_weights_file(tmp_path):
    nbits_graph(tmp_path)
    name = write_prefill_graph(tmp_path, "model.onnx", 1)
    assert name == "prefill.onnx"
    assert {s[2] for s in matmul_nbits_settings(tmp_path / name)} == {1}
    assert {s[2] for s in matmul_nbits_settings(tmp_path / "model.onnx")} == {4}  # the decode graph as it was
    prefill = onnx.load(str(tmp_path / name), load_external_data=False)
    locations = {e.value for i in prefill.graph.initializer for e in i.external_data if e.key == "location"}
    assert locations == {"model.onnx.data"} and not (tmp_path / "prefill.onnx.data").exists()


def test_a_graph_without_matmulnbits_gets_no_prefill_graph(tmp_path):
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", values[:1],
                                                  values[1:])), str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="needs MatMulNBits nodes"):
        write_prefill_graph(tmp_path, "model.onnx", 1)


def test_only_builder_int4_takes_a_prefill_accuracy_level():
    assert resolve("builder", "int4", QuantOptions(prefill_accuracy_level=1)).prefill_accuracy_level == 1
    for backend, precision in (("builder", "fp32"), ("builder", "int8"), ("optimum", "int4")):
        with pytest.raises(BadOptions, match="--prefill-accuracy-level"):
            resolve(backend, precision, QuantOptions(prefill_accuracy_level=1))


@pytest.mark.slow
def test_an_int4_export_with_a_prefill_graph_validates_both(sources, tmp_path):
    package = export_or_fail(sources["llama"], tmp_path / "llama-int4", "--precision", "int4",
                             "--prefill-accuracy-level", "1")
    manifest = open_package(package)
    assert manifest.prefill_graph.file == "prefill.onnx" and manifest.prefill_graph.quantization["accuracy_level"] == 1
    assert manifest.quantization["accuracy_level"] == 4
    assert {s[2] for s in matmul_nbits_settings(package / "prefill.onnx")} == {1}
    figures = manifest.validation
    assert figures["passed"] and figures["prefill_graph"]["logits_cosine_mean"] > 0.7
    # What the split does to an int4 package's tokens: recorded, not required (the recipes round differently).
    tokens = {}
    for setting in ("auto", "off"):
        runner = open_decoder_runner(package, manifest, RuntimeOptions(("cpu",), prefill_graph=setting), max_context=64)
        logits = runner.prefill(0, list(range(3, 19)), 0)
        tokens[setting] = [int(np.argmax(logits))]
        for step in range(15):
            logits = runner.decode(np.asarray([tokens[setting][-1]]), np.asarray([16 + step]))[0]
            tokens[setting].append(int(np.argmax(logits)))
    print(json.dumps(tokens))


def test_a_prefill_graph_under_the_floors_fails_validation():
    from export.validate import failures

    good = {"logits_rel_diff": 0.5, "logits_cosine_mean": 0.9, "top5_overlap": 0.5, "kl_mean": 0.4}
    figures = {"kind": "decoder", **good, "greedy_tokens": 32, "greedy_prefix_match": 3,
               "prefill_graph": {**good, "logits_cosine_mean": 0.3}}
    assert failures(figures, "text-generation", "int4") == [
        "prefill graph: logits cosine 0.3000 along the greedy path (floor 0.7)"]
