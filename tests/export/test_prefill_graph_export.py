"""--prefill-accuracy-level: a second graph at another MatMulNBits accuracy level over the same weights;
--prefill-int8: one with int8 weights and per-token int8 activations."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from appliance.engine.providers import RuntimeOptions
from appliance.engine.runners import open_decoder_runner
from appliance.model_package import open_package
from export.graph_info import matmul_nbits_settings
from export.prefill_graph import write_int8_prefill_graph, write_prefill_graph
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


def nbits_node(rng, name, source, out, k, n, zero_points):
    """A 4-bit MatMulNBits node in blocks of 32 with random weights (and zero points), as the builder
    writes them: weights [N, blocks, 16] bytes, scales [N, blocks], zero points two a byte."""
    blocks = -(-k // 32)
    tensors = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, 16), dtype=np.uint8), name + ".w"),
               numpy_helper.from_array(rng.uniform(0.01, 0.05, (n, blocks)).astype(np.float32), name + ".s")]
    if zero_points:
        zeros = rng.integers(0, 256, n * -(-blocks // 2), dtype=np.uint8)
        tensors.append(numpy_helper.from_array(zeros, name + ".z"))
    node = helper.make_node("MatMulNBits", [source] + [t.name for t in tensors], [out], name=name,
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=32, accuracy_level=4)
    return node, tensors


def random_layer_graph(folder, zero_points=False, opset=17):
    """A layer's MatMulNBits (64 -> 24) feeding an LM head's (24 -> 8: K not a multiple of the block)."""
    rng = np.random.default_rng(3)
    layer, layer_weights = nbits_node(rng, "/model/layers.0/mlp/up_proj/MatMul_Q4", "x", "h", 64, 24, zero_points)
    head, head_weights = nbits_node(rng, "/lm_head/MatMul_Q4", "h", "logits", 24, 8, zero_points)
    graph = helper.make_graph([layer, head], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["S", 64])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["S", 8])],
                              layer_weights + head_weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)


def run_graph(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("zero_points", [False, True], ids=["symmetric", "zero points"])
def test_the_int8_prefill_graph_computes_the_int4_weights_rows_apart(tmp_path, zero_points):
    random_layer_graph(tmp_path, zero_points)
    assert write_int8_prefill_graph(tmp_path, "model.onnx") == "prefill.onnx"
    prefill = onnx.load(str(tmp_path / "prefill.onnx"), load_external_data=False)
    ops = [node.op_type for node in prefill.graph.node]
    assert ops.count("MatMulIntegerToFloat") == 1 and ops.count("MatMulNBits") == 1  # the LM head stays
    assert ops.count("Mul") == 1  # the one making the row scale: the kernel scales its products itself
    locations = {e.value for i in prefill.graph.initializer for e in i.external_data if e.key == "location"}
    assert locations == {"model.onnx.data", "prefill.onnx.data"}  # kept tensors are not written twice
    exact = tmp_path / "fp32-activations"  # the same int4 weights at accuracy level 1: the reference
    exact.mkdir()
    for name in ("model.onnx", "model.onnx.data"):
        shutil.copy(tmp_path / name, exact / name)
    write_prefill_graph(exact, "model.onnx", 1)
    x = np.random.default_rng(4).normal(size=(7, 64)).astype(np.float32)
    x[2] *= 40  # a row of large values: it must not coarsen the other rows' quantization
    reference, got = run_graph(exact / "prefill.onnx", x), run_graph(tmp_path / "prefill.onnx", x)
    # Within a few percent of each row's largest logit, through both MatMuls (a wrong nibble order
    # or scale gives errors of the logits' own size).
    assert (np.abs(got - reference).max(axis=1) < 0.08 * np.abs(reference).max(axis=1)).all()
    # Each row quantized on its own, integer sums: a row's result does not depend on the others.
    for rows in (slice(0, 1), slice(0, 3), slice(3, 7)):
        assert np.array_equal(run_graph(tmp_path / "prefill.onnx", x[rows]), got[rows])


def test_from_opset_21_one_blocked_quantizelinear_quantizes_the_rows_bit_for_bit_as_four_ops(tmp_path):
    outputs = {}
    for opset in (17, 21):
        folder = tmp_path / f"opset-{opset}"
        folder.mkdir()
        random_layer_graph(folder, zero_points=True, opset=opset)  # the same weights: the same seed
        write_int8_prefill_graph(folder, "model.onnx")
        ops = [node.op_type for node in onnx.load(str(folder / "prefill.onnx"), load_external_data=False).graph.node]
        assert ("QuantizeLinear" in ops, "Round" in ops) == ((True, False) if opset == 21 else (False, True))
        x = np.random.default_rng(5).normal(size=(9, 64)).astype(np.float32)
        x[4] *= 300
        x[6] = 0  # an all-zero row: its scale is 0, and so are its products, whatever 0 / 0 quantized to
        outputs[opset] = run_graph(folder / "prefill.onnx", x)
    assert np.isfinite(outputs[21]).all() and not outputs[21][6].any()
    assert np.array_equal(outputs[17], outputs[21])


def test_a_graph_without_layer_matmulnbits_gets_no_int8_prefill_graph(tmp_path):
    values = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1]) for name in ("x", "y")]
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", values[:1],
                                                  values[1:])), str(tmp_path / "model.onnx"))
    with pytest.raises(ExportError, match="needs the layers' MatMulNBits nodes"):
        write_int8_prefill_graph(tmp_path, "model.onnx")


def test_only_builder_int4_takes_a_prefill_graph_and_only_one_kind():
    assert resolve("builder", "int4", QuantOptions(prefill_int8=True)).prefill_int8
    for backend, precision in (("builder", "fp32"), ("builder", "int8"), ("optimum", "int4")):
        with pytest.raises(BadOptions, match="--prefill-int8"):
            resolve(backend, precision, QuantOptions(prefill_int8=True))
    with pytest.raises(BadOptions, match="--prefill-accuracy-level and --prefill-int8"):
        resolve("builder", "int4", QuantOptions(prefill_accuracy_level=1, prefill_int8=True))


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


def test_an_int4_export_with_an_int8_prefill_graph_validates_it_and_records_the_recipe(llama_int4_prefill_int8):
    manifest = open_package(llama_int4_prefill_int8)
    graph = manifest.prefill_graph
    assert graph.file == "prefill.onnx" and graph.quantization["op"] == "MatMulIntegerToFloat"
    assert {"prefill.onnx", "prefill.onnx.data"} <= set(manifest.files)
    # Its weights: the int8 ones in its own file, the LM head and embedding in the decode graph's.
    assert graph.weight_bytes > (llama_int4_prefill_int8 / "prefill.onnx.data").stat().st_size
    figures = manifest.validation
    # Against PyTorch, within a hair of the decode graph whose int4 weights it requantizes (on random
    # weights both sit near 0.85).
    assert figures["passed"] and figures["prefill_graph"]["logits_cosine_mean"] > figures["logits_cosine_mean"] - 0.02
    ops = {node.op_type for node in onnx.load(str(llama_int4_prefill_int8 / "prefill.onnx"),
                                              load_external_data=False).graph.node}
    assert "MatMulIntegerToFloat" in ops and "GroupQueryAttention" in ops


def test_a_prefill_graph_under_the_floors_fails_validation():
    from export.validate import failures

    good = {"logits_rel_diff": 0.5, "logits_cosine_mean": 0.9, "top5_overlap": 0.5, "kl_mean": 0.4}
    figures = {"kind": "decoder", **good, "greedy_tokens": 32, "greedy_prefix_match": 3,
               "prefill_graph": {**good, "logits_cosine_mean": 0.3}}
    assert failures(figures, "text-generation", "int4") == [
        "prefill graph: logits cosine 0.3000 along the greedy path (floor 0.7)"]
