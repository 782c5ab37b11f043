"""Reading an exported graph's IO signature (names, dtypes, symbolic shapes) for the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import onnx

from appliance.model_package import IOSignature, TensorSpec


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else None)
            for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return TensorSpec(name=value.name, dtype=dtype, shape=dims)


def io_signature(model_path: Path) -> IOSignature:
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return IOSignature(
        inputs=[_spec(v) for v in model.graph.input if v.name not in initializers],
        outputs=[_spec(v) for v in model.graph.output],
    )


def matmul_nbits_nodes(model_path: Path) -> dict[str, tuple[int, int, int, bool]]:
    """(bits, block_size, accuracy_level, symmetric) of each MatMulNBits node, by the name of the
    MatMul it replaced (the quantizers append _Q<bits>). accuracy_level 0 means the attribute is
    absent; symmetric means the node has no zero-points input."""
    model = onnx.load(str(model_path), load_external_data=False)
    settings = {}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        zero_points = len(node.input) > 3 and node.input[3] != ""
        settings[re.sub(r"_Q\d+$", "", node.name)] = (attributes.get("bits", 4), attributes.get("block_size"),
                                                     attributes.get("accuracy_level", 0), not zero_points)
    return settings


def matmul_nbits_settings(model_path: Path) -> set[tuple[int, int, int, bool]]:
    """The distinct (bits, block_size, accuracy_level, symmetric) of the graph's MatMulNBits nodes."""
    return set(matmul_nbits_nodes(model_path).values())

