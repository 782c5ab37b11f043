"""The attention-kernel benchmark compares like with like: its float16 GroupQueryAttention computes
what its float32 one does, on the same inputs and the same cached positions."""

import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "engine"))
import attention_kernels  # noqa: E402


def _output(candidate) -> np.ndarray:
    candidate.run()
    return candidate.output("output").astype(np.float32)


def test_float16_and_float32_candidates_agree():
    shape = (4, 2, 16, 8, 24, 64, 1)  # heads, kv heads, head size, rest, past, context, threads
    f32, f16 = TensorProto.FLOAT, TensorProto.FLOAT16
    full = _output(attention_kernels.gqa(f32, np.float32, f32, np.float32, *shape))
    half = _output(attention_kernels.gqa(f16, np.float16, f16, np.float16, *shape))
    assert full.shape == (1, 8, 4 * 16)
    assert np.abs(full).max() > 0.01  # something was attended to
    np.testing.assert_allclose(half, full, atol=2e-2)


def test_main_reports_every_candidate(capsys):
    assert attention_kernels.main(["--rest", "4", "--past", "12", "--context", "32", "--runs", "2"]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line for line in printed.splitlines() if line.startswith("  ")}
    assert set(lines) == {"gqa-fp32", "gqa-fp16", "gqa-bf16", "gqa-int8kv", "mha-fp32"}
    # The baseline always runs: the ratios are against it.
    assert "ms a layer" in lines["gqa-fp32"] and "1.00x gqa-fp32" in lines["gqa-fp32"]
