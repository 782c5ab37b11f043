"""Rewrites a builder graph so that its LM head runs on the last position only.

A prefill chunk of S tokens needs one row of logits, but the builder's graph computes
[batch, S, vocab]: at a 152k vocabulary the LM head is a quarter of a 0.5B model's prefill work.
One Slice of the final normed hidden state on the sequence axis, before the LM-head MatMul (or
MatMulNBits), makes the logits [batch, 1, vocab] for prefill and decode alike (decode has S = 1).
onnx's own protobuf API edits the graph; the weights stay in their external data file untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.source import ExportError

LOGITS = "logits"
LM_HEAD_OPS = ("MatMul", "MatMulNBits", "Gemm")
# Between the LM head and the graph output the builder may put a cast (fp16 graphs' fp32 logits).
PASS_THROUGH_OPS = ("Cast", "Identity")
SLICE_NAME = "/lm_head/last_position/Slice"


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _lm_head(graph: onnx.GraphProto) -> tuple[onnx.NodeProto, list[str]]:
    """The LM-head node and the tensors between it and the logits output (their shapes change)."""
    producers, tensor, downstream = _producers(graph), LOGITS, []
    while (node := producers.get(tensor)) is not None and node.op_type in PASS_THROUGH_OPS:
        downstream.append(tensor)
        tensor = node.input[0]
    if node is None or node.op_type not in LM_HEAD_OPS:
        found = node.op_type if node is not None else "no node"
        raise ExportError(f"cannot find the LM head: {LOGITS} comes from {found}, not a MatMul")
    return node, [*downstream, tensor]


def slice_to_last_position(model_path: Path) -> None:
    """Rewrites the graph file in place (its external data file is left as it is)."""
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    if any(node.name == SLICE_NAME for node in graph.node):
        return
    head, changed = _lm_head(graph)
    hidden = head.input[0]
    last = f"{hidden}/last_position"
    constants = {"starts": -1, "ends": np.iinfo(np.int64).max, "axes": 1}
    for name, value in constants.items():
        graph.initializer.append(numpy_helper.from_array(np.asarray([value], np.int64), f"{SLICE_NAME}/{name}"))
    slice_node = helper.make_node("Slice", [hidden, *(f"{SLICE_NAME}/{name}" for name in constants)], [last],
                                  name=SLICE_NAME)
    graph.node.insert(list(graph.node).index(head), slice_node)
    head.input[0] = last
    # Recorded shapes past the slice still say sequence_length: drop them, ORT infers them again.
    stale = [info for info in graph.value_info if info.name in changed]
    for info in stale:
        graph.value_info.remove(info)
    output = next(o for o in graph.output if o.name == LOGITS)
    output.type.tensor_type.shape.dim[1].Clear()
    output.type.tensor_type.shape.dim[1].dim_value = 1
    onnx.save(model, str(model_path))
