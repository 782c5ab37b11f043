"""Reading an exported graph's IO signature (names, dtypes, symbolic shapes) for the manifest."""

from __future__ import annotations

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


def matmul_nbits_widths(model_path: Path) -> set[int]:
    """The weight bit-widths of the graph's MatMulNBits nodes (empty when it has none)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return {onnx.helper.get_attribute_value(attribute) for node in model.graph.node if node.op_type == "MatMulNBits"
            for attribute in node.attribute if attribute.name == "bits"}
