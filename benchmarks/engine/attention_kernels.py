"""The attention kernels ONNX Runtime's CPU provider offers for a prefix-cache hit's rest: a new
question of REST tokens after PAST cached positions, one layer timed, side by side in one run.

    .venv/bin/python benchmarks/engine/attention_kernels.py [--shape smollm-135m] [--rest 41] [--past 1020]

Attention is about half the prefill of a seen prefix's rest on the SmolLM-135M shape (35 of
68 ms), and OpenVINO runs it in bfloat16 where the CPU has AVX-512 BF16 or AMX. What each
candidate computes:

- gqa-fp32: GroupQueryAttention as the packages run it: float32 KV cache, past and present one
  buffer, rotary inside;
- gqa-fp16: the same in float16 (inputs and cache);
- gqa-bf16: the same in bfloat16;
- gqa-int8kv: float32 attention over an int8 KV cache (one scale per tensor);
- mha-fp32: MultiHeadAttention, the kv heads expanded to the query heads, past and present
  separate (it has no GQA layout and no shared buffer).

A kernel the build lacks prints "not implemented"; the ratio is each one's median time over
gqa-fp32's. Runs alternate between candidates, so a slow second hits them all.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ml_dtypes
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, ValueInfoProto, helper

SHAPES = {  # query heads, kv heads, head size, layers
    "smollm-135m": (9, 3, 64, 30),
    "qwen2.5-0.5b": (14, 2, 64, 24),
}


def _model(nodes, inputs, outputs) -> bytes:
    graph = helper.make_graph(nodes, "attention", inputs, outputs)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _tensor(name: str, elem_type: int, shape) -> ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


class Candidate:
    """One kernel's session and its bound inputs; run() times one call. `shared` maps an input to
    the output bound to the same buffer (past and present KV)."""

    def __init__(self, model: bytes, feeds: dict, shared: dict[str, str], threads: int):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.set_denormal_as_zero", "1")  # as the daemon runs
        # Its threads stop spinning when a run returns, or they would take the cores from the
        # candidate timed next (each session has its own pool).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.binding = self.session.io_binding()
        self._values = []  # OrtValues bound as both past and present: kept alive here
        self.output_names = []  # in the order they are bound, which binding.get_outputs() keeps
        for input_name, value in feeds.items():
            output_name = shared.get(input_name)
            if output_name is None:
                self.binding.bind_cpu_input(input_name, value)
                continue
            buffer = ort.OrtValue.ortvalue_from_numpy(value)
            self._values.append(buffer)
            self.binding.bind_ortvalue_input(input_name, buffer)
            self.binding.bind_ortvalue_output(output_name, buffer)
            self.output_names.append(output_name)
        for output in self.session.get_outputs():
            if output.name not in shared.values():
                self.binding.bind_output(output.name)
                self.output_names.append(output.name)

    def output(self, name: str) -> np.ndarray:
        """The last run's output `name` on the host."""
        return self.binding.get_outputs()[self.output_names.index(name)].numpy()

    def run(self) -> float:
        start = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        return time.perf_counter() - start


def gqa(dtype, array_type, cache_type, cache_array, heads, kv_heads, size, rest, past, context, threads,
        quant: str = "") -> Candidate:
    width = (heads + 2 * kv_heads) * size
    attributes = dict(num_heads=heads, kv_num_heads=kv_heads, do_rotary=1)
    inputs = [_tensor("qkv", dtype, [1, rest, width]), _tensor("past_key", cache_type, [1, kv_heads, context, size]),
              _tensor("past_value", cache_type, [1, kv_heads, context, size]), _tensor("seqlens_k", TensorProto.INT32, [1]),
              _tensor("total_length", TensorProto.INT32, [1]), _tensor("cos", dtype, [context, size // 2]),
              _tensor("sin", dtype, [context, size // 2])]
    names = ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total_length", "cos", "sin"]
    rng = np.random.default_rng(0)
    feeds = {"qkv": (rng.random((1, rest, width)) - 0.5).astype(array_type),
             "past_key": np.zeros((1, kv_heads, context, size), cache_array),
             "past_value": np.zeros((1, kv_heads, context, size), cache_array),
             "seqlens_k": np.array([past + rest - 1], np.int32), "total_length": np.array([past + rest], np.int32),
             "cos": rng.random((context, size // 2)).astype(array_type),
             "sin": rng.random((context, size // 2)).astype(array_type)}
    if quant:
        attributes.update(k_quant_type=quant, v_quant_type=quant, kv_cache_bit_width=8)
        inputs += [_tensor("k_scale", TensorProto.FLOAT, [1]), _tensor("v_scale", TensorProto.FLOAT, [1])]
        names += ["", "", "", "k_scale", "v_scale"]
        feeds.update(k_scale=np.array([0.05], np.float32), v_scale=np.array([0.05], np.float32))
    node = helper.make_node("GroupQueryAttention", names, ["output", "present_key", "present_value"],
                            domain="com.microsoft", **attributes)
    outputs = [_tensor("output", dtype, None), _tensor("present_key", cache_type, None),
               _tensor("present_value", cache_type, None)]
    return Candidate(_model([node], inputs, outputs), feeds,
                     {"past_key": "present_key", "past_value": "present_value"}, threads)


def mha(heads, size, rest, past, threads) -> Candidate:
    width = heads * size
    inputs = [_tensor(n, TensorProto.FLOAT, [1, rest, width]) for n in ("query", "key", "value")]
    inputs += [_tensor(n, TensorProto.FLOAT, [1, heads, past, size]) for n in ("past_key", "past_value")]
    node = helper.make_node("MultiHeadAttention", ["query", "key", "value", "", "", "", "past_key", "past_value"],
                            ["output", "present_key", "present_value"], domain="com.microsoft", num_heads=heads,
                            unidirectional=1)
    outputs = [_tensor(n, TensorProto.FLOAT, None) for n in ("output", "present_key", "present_value")]
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((1, rest, width), np.float32) for n in ("query", "key", "value")}
    feeds.update({n: rng.random((1, heads, past, size), np.float32) for n in ("past_key", "past_value")})
    return Candidate(_model([node], inputs, outputs), feeds, {}, threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="smollm-135m")
    parser.add_argument("--rest", type=int, default=41, help="new tokens prefilled after the hit")
    parser.add_argument("--past", type=int, default=1020, help="cached positions before them")
    parser.add_argument("--context", type=int, default=2048, help="the KV buffer's positions")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args(argv)
    heads, kv_heads, size, layers = SHAPES[args.shape]
    common = (heads, kv_heads, size, args.rest, args.past, args.context, args.threads)
    f32, f16, bf16, i8 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT8
    makers = {
        "gqa-fp32": lambda: gqa(f32, np.float32, f32, np.float32, *common),
        "gqa-fp16": lambda: gqa(f16, np.float16, f16, np.float16, *common),
        "gqa-bf16": lambda: gqa(bf16, ml_dtypes.bfloat16, bf16, ml_dtypes.bfloat16, *common),
        "gqa-int8kv": lambda: gqa(f32, np.float32, i8, np.int8, *common, quant="PER_TENSOR"),
        "mha-fp32": lambda: mha(heads, size, args.rest, args.past, args.threads),
    }
    candidates, missing = {}, {}
    for name, make in makers.items():
        try:
            candidate = make()
            candidate.run()  # a kernel may be registered and still refuse these inputs at run time
            candidates[name] = candidate
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the point is which kernels exist
            missing[name] = str(exc).splitlines()[0][:160]
    for candidate in candidates.values():
        for _ in range(3):
            candidate.run()
    times = {name: [] for name in candidates}
    for _ in range(args.runs):
        for name, candidate in candidates.items():
            times[name].append(candidate.run())
    print(f"onnxruntime {ort.__version__}, {args.shape} ({heads}/{kv_heads} heads, head size {size}, {layers} layers): "
          f"{args.rest} new tokens after {args.past} cached, {args.threads} threads, median of {args.runs}")
    base = statistics.median(times["gqa-fp32"]) if "gqa-fp32" in times else None
    for name in makers:
        if name in missing:
            print(f"  {name:11s} not implemented or refused: {missing[name]}")
            continue
        median = statistics.median(times[name])
        ratio = f"{median / base:5.2f}x gqa-fp32" if base else ""
        print(f"  {name:11s} {1e3 * median:7.3f} ms a layer, {1e3 * median * layers:6.1f} ms for {layers}  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
