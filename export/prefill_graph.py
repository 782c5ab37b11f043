"""A second graph for prefill: the decode graph with another MatMulNBits accuracy level.

The recipe that prefills fastest need not decode fastest: on an AVX2-only host accuracy level 1
(fp32 activations) prefilled a 1,200-token prompt 1.25x faster than level 4, which decoded 3x
faster. The prefill graph is a copy of the graph's nodes with the `accuracy_level` attribute of
every MatMulNBits rewritten; it names the same external data file, so the package holds the
weights once on disk (each ONNX Runtime session still loads and prepacks its own copy in memory).
The KV layout and IO signature are the decode graph's, so the runner binds the same buffers.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import helper

from export.source import ExportError

PREFILL_FILE = "prefill.onnx"


def write_prefill_graph(staging: Path, model_file: str, accuracy_level: int) -> str:
    """Writes the prefill graph beside model_file in staging; returns its package-relative name."""
    model = onnx.load(str(staging / model_file), load_external_data=False)
    nodes = [node for node in model.graph.node if node.op_type == "MatMulNBits"]
    if not nodes:
        raise ExportError("a prefill graph of another accuracy level needs MatMulNBits nodes; the graph has none")
    for node in nodes:
        kept = [a for a in node.attribute if a.name != "accuracy_level"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("accuracy_level", accuracy_level)])
    name = (Path(model_file).parent / PREFILL_FILE).as_posix()
    onnx.save(model, str(staging / name))
    return name


def weight_bytes(package_dir: Path, model_file: str) -> int:
    """Bytes of weights a session of this graph loads: its inline and external initializers."""
    model = onnx.load(str(package_dir / model_file), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        external = {entry.key: entry.value for entry in tensor.external_data}
        total += int(external["length"]) if "length" in external else len(tensor.raw_data)
    return total
