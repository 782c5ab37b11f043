"""Deliberately broken quantized graphs: what validation must refuse (tests and benchmarks use it).

Two faults a real quantizer bug produces: wrong scales (every block's scale is another block's of
the same weight, as a layout bug would leave them) and a dropped layer (one layer's quantized
weights scaled to zero).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

FAULTS = ("wrong_scales", "dropped_layer")


def _scales_of(model) -> dict[str, str]:
    """Scale initializers of the quantized MatMul weights, by the node that reads them."""
    initializers = {i.name for i in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "MatMulNBits" and node.input[2] in initializers:
            scales[node.name] = node.input[2]
    return scales


def break_graph(model_path: Path, fault: str, seed: int = 0) -> int:
    """Rewrites the graph at model_path in place with `fault`; returns how many scale tensors changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    external = any(model_path.parent.glob(model_path.name + "*data"))
    by_node = _scales_of(model)
    if not by_node:
        raise ValueError(f"{model_path.name} holds no quantized MatMul weights to break")
    if fault == "wrong_scales":
        targets = set(by_node.values())
    elif fault == "dropped_layer":
        # The middle layer's MatMuls: the nodes named like the middle entry of the sorted layer list.
        layers = sorted({_layer_of(node) for node in by_node} - {None})
        middle = layers[len(layers) // 2] if layers else None
        targets = {scales for node, scales in by_node.items() if _layer_of(node) == middle}
    else:
        raise ValueError(f"unknown fault {fault}; known: {', '.join(FAULTS)}")
    rng = np.random.default_rng(seed)
    for initializer in model.graph.initializer:
        if initializer.name in targets:
            values = numpy_helper.to_array(initializer)
            broken = rng.permutation(values.ravel()).reshape(values.shape) if fault == "wrong_scales" else 0 * values
            initializer.CopyFrom(numpy_helper.from_array(broken.astype(values.dtype), initializer.name))
    if external:
        for stale in model_path.parent.glob(model_path.name + "*data"):
            stale.unlink()
        onnx.save(model, str(model_path), save_as_external_data=True, location=model_path.name + ".data")
    else:
        onnx.save(model, str(model_path))
    return len(targets)


def _layer_of(node_name: str):
    """The layer number in a node name such as /model/layers.3/attn/... or /0/encoder/layer.3/..."""
    found = re.search(r"layers?[._](\d+)[./]", node_name)
    return int(found.group(1)) if found else None
