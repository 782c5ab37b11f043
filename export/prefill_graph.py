"""A second graph for prefill, over the decode graph's IO signature and KV layout (the runner binds
the same buffers to both): the recipe that prefills fastest need not decode fastest.

- Another MatMulNBits accuracy level (`write_prefill_graph`): on an AVX2-only host level 1 (fp32
  activations) prefilled a 1,200-token prompt 1.25x faster than level 4, which decoded 3x faster.
  A copy of the graph's nodes with `accuracy_level` rewritten, naming the same external data file,
  so the package holds the weights once on disk (each ONNX Runtime session still loads and
  prepacks its own copy in memory).
- Int8 weights and per-token int8 activations (`write_int8_prefill_graph`): MatMulNBits' int8
  path multiplies tens of rows at a fraction of what ONNX Runtime's integer GEMM (MLAS QGEMM, the
  kernel under MatMulIntegerToFloat) does on the same host (about 3x on AVX-512 VNNI at 41-128
  rows). Each layer MatMul's weights are the decode graph's int4 values, dequantized and requantized
  per output channel to int8; each row of its input is quantized on its own (scale = max |x| / 127,
  unsigned around 128), so a token's values never depend on the other rows of its chunk, and
  integer sums are exact whatever the rows: where a prompt is cut, or what else shares a chunk,
  changes no bit. The LM head, which prefill runs on one row, stays as it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.external_data_helper import set_external_data

from export.source import ExportError

PREFILL_FILE = "prefill.onnx"
INT8_RECIPE = {"method": "per-token int8 activations, per-channel int8 weights requantized from the decode graph's",
               "op": "MatMulIntegerToFloat", "bits": 8, "symmetric": True, "tool": "export/prefill_graph.py"}
_MS_DOMAIN = "com.microsoft"


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


def write_int8_prefill_graph(staging: Path, model_file: str) -> str:
    """Writes the int8 prefill graph beside model_file in staging; returns its package-relative name.
    Its new weights go to a file of their own; the tensors it keeps (the embedding table, the LM
    head) stay where the decode graph's are, so the disk holds them once."""
    model = onnx.load(str(staging / model_file), load_external_data=False)
    folder = (staging / model_file).parent
    graph = model.graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    layer_matmuls = [n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" not in n.name]
    if not layer_matmuls:
        raise ExportError("an int8 prefill graph needs the layers' MatMulNBits nodes; the graph has none")
    constants = {"prefill_q_step": np.array(1 / 127, np.float32), "prefill_q_zero": np.array(128, np.uint8)}
    if opset >= 18:  # ReduceMax's axes: an input from opset 18 on, an attribute before
        constants["prefill_q_axes"] = np.array([-1], np.int64)
    if opset < 21:  # the four-op quantization's shift (see _quantize_rows)
        constants["prefill_q_offset"] = np.array(128, np.float32)
    added = [numpy_helper.from_array(value, name) for name, value in constants.items()]
    quantized: dict[str, tuple[str, str]] = {}  # an input's (uint8 rows, row scales)
    replaced, nodes, dropped = {id(n) for n in layer_matmuls}, [], set()
    for node in graph.node:
        if id(node) not in replaced:
            nodes.append(node)
            continue
        source = node.input[0]
        if source not in quantized:
            width = next(a.i for a in node.attribute if a.name == "K")
            quantized[source] = _quantize_rows(source, width, nodes, opset, first=not quantized)
        rows, row_scales = quantized[source]
        weight, channel_scales = _int8_weight(node, weights, folder)
        dropped.update(name for name in node.input[1:] if name)
        added += [numpy_helper.from_array(weight, node.name + ".int8_weight"),
                  numpy_helper.from_array(channel_scales, node.name + ".int8_scales")]
        # The row scales [..., 1] go in as a_scale: the kernel scales each row as it writes the
        # products, bit for bit what a Mul after it did, without the Mul's pass (the 150 Muls took
        # about 2.5% of a 41-row prefill after 1,020 cached positions on SmolLM-135M).
        nodes.append(helper.make_node("MatMulIntegerToFloat", [rows, node.name + ".int8_weight", row_scales,
                                                               node.name + ".int8_scales", "prefill_q_zero"],
                                      [node.output[0]], name=node.name + "_int8", domain=_MS_DOMAIN))
    _write_external(added, folder / (PREFILL_FILE + ".data"))  # before extend copies the tensors
    kept = [tensor for tensor in graph.initializer if tensor.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    del graph.node[:]
    graph.node.extend(nodes)
    name = (Path(model_file).parent / PREFILL_FILE).as_posix()
    onnx.save(model, str(staging / name))
    return name


def _write_external(tensors: list, path: Path) -> None:
    """Moves the data of the tensors over 1 KB into the file at `path` (64-byte aligned), leaving
    references; the small constants stay in the graph."""
    with path.open("wb") as out:
        for tensor in tensors:
            if len(tensor.raw_data) <= 1024:
                continue
            out.write(bytes(-out.tell() % 64))
            offset, data = out.tell(), tensor.raw_data
            out.write(data)
            set_external_data(tensor, path.name, offset, len(data))
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL


# Every row's zero point, [..., 1] like the scales: one tensor per run, made beside the first
# quantization and read by all (blocked QuantizeLinear wants the zero point in the scale's shape).
_ROW_ZEROS = "prefill_q_row_zeros"


def _quantize_rows(source: str, width: int, nodes: list, opset: int, first: bool) -> tuple[str, str]:
    """Appends the nodes that quantize each row of `source` ([..., width]) to uint8 around 128
    (symmetric, its own scale max |x| / 127); returns the names of the rows and of their scales
    [..., 1]. From opset 21 on, one QuantizeLinear in blocks of a whole row divides, rounds half to
    even and saturates, as Div, Round, Add and Cast do before it, bit for bit, in one pass: 120 of
    them took 5.2 ms where the four ops took 7.1 ms, on 41 rows of SmolLM-135M's width."""
    stem = source.strip("/").replace("/", "_") + "_int8_rows"
    names = {part: f"{stem}/{part}" for part in ("abs", "max", "scale", "steps", "round", "shift", "rows")}
    # No floor under the scale: an all-zero row's scale is 0, its quantized values whatever 0 / 0
    # makes of them, and its products, scaled by that 0, exactly 0, as they should be. A Max node
    # per quantization kept it at 1e-12 for 1.4 ms of a 60 ms prefill (41 rows after 1,000 cached).
    nodes += [helper.make_node("Abs", [source], [names["abs"]]),
              helper.make_node("ReduceMax", [names["abs"], "prefill_q_axes"], [names["max"]], keepdims=1)
              if opset >= 18 else helper.make_node("ReduceMax", [names["abs"]], [names["max"]], axes=[-1], keepdims=1),
              helper.make_node("Mul", [names["max"], "prefill_q_step"], [names["scale"]])]
    if opset >= 21:
        if first:
            nodes += [helper.make_node("Shape", [names["scale"]], [_ROW_ZEROS + "/shape"]),
                      helper.make_node("ConstantOfShape", [_ROW_ZEROS + "/shape"], [_ROW_ZEROS],
                                       value=numpy_helper.from_array(np.array([128], np.uint8)))]
        nodes.append(helper.make_node("QuantizeLinear", [source, names["scale"], _ROW_ZEROS], [names["rows"]],
                                      axis=-1, block_size=width))
    else:
        nodes += [helper.make_node("Div", [source, names["scale"]], [names["steps"]]),
                  helper.make_node("Round", [names["steps"]], [names["round"]]),
                  helper.make_node("Add", [names["round"], "prefill_q_offset"], [names["shift"]]),
                  helper.make_node("Cast", [names["shift"]], [names["rows"]], to=onnx.TensorProto.UINT8)]
    return names["rows"], names["scale"]


def _int8_weight(node, weights: dict, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A MatMulNBits node's weights as [K, N] int8 per output channel and the channels' scales."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attributes["K"], attributes["N"], attributes["bits"], attributes["block_size"]
    if bits not in (4, 8) or any(node.input[4:6]):  # g_idx or a bias: not what the builder writes
        raise ExportError(f"{node.name}: an int8 prefill graph takes 4- or 8-bit MatMulNBits without g_idx or bias")
    packed = numpy_helper.to_array(weights[node.input[1]], str(folder)).reshape(n, -1)  # [N, blocks * blob]
    if bits == 4:  # two values a byte, the low nibble first
        values = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)
    else:
        values = packed
    blocks = -(-k // block)
    values = values[:, : blocks * block].reshape(n, blocks, block).astype(np.float32)
    scales = numpy_helper.to_array(weights[node.input[2]], str(folder)).astype(np.float32).reshape(n, blocks, 1)
    if len(node.input) > 3 and node.input[3]:
        zero = _zero_points(numpy_helper.to_array(weights[node.input[3]], str(folder)), bits, n, blocks)
    else:
        zero = np.float32(2 ** (bits - 1))
    dense = ((values - zero) * scales).reshape(n, blocks * block)[:, :k]  # [N, K]
    channel_scales = np.maximum(np.abs(dense).max(axis=1), 1e-12) / 127
    weight = np.clip(np.rint(dense / channel_scales[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(weight.T), channel_scales.astype(np.float32)


def _zero_points(stored: np.ndarray, bits: int, n: int, blocks: int) -> np.ndarray:
    """MatMulNBits zero points as float [N, blocks, 1]: 4-bit ones two a byte, each row padded to
    whole bytes."""
    if stored.dtype != np.uint8:  # float zero points (not written by the builder's RTN)
        return stored.astype(np.float32).reshape(n, blocks, 1)
    if bits == 4:
        stored = np.stack([stored.reshape(n, -1) & 0x0F, stored.reshape(n, -1) >> 4], axis=-1).reshape(n, -1)
    return stored.reshape(n, -1)[:, :blocks].astype(np.float32).reshape(n, blocks, 1)


def weight_bytes(package_dir: Path, model_file: str) -> int:
    """Bytes of weights a session of this graph loads: its inline and external initializers."""
    model = onnx.load(str(package_dir / model_file), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        external = {entry.key: entry.value for entry in tensor.external_data}
        total += int(external["length"]) if "length" in external else len(tensor.raw_data)
    return total
