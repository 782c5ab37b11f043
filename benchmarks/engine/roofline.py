"""The memory-bandwidth roofline of CPU decoding: how fast this host reads memory, and how many
weight bytes a decode step reads, so bench_engine.py can say what fraction of the bound it reaches."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def read_bandwidth_gbs() -> float:
    """Streaming read bandwidth: sum a 1 GiB array with numpy (one pass, read-bound)."""
    data = np.ones(1 << 28, np.float32)
    data.sum()
    best = min(_timed(data.sum) for _ in range(3))
    return data.nbytes / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_weight_bytes(package: Path) -> int:
    """Bytes of weights a decode step reads: everything but the embedding table (one row read)."""
    import onnx

    model = onnx.load(str(package / "model.onnx"), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        length = next((int(e.value) for e in init.external_data if e.key == "length"), len(init.raw_data))
        if "embed_tokens" not in init.name:
            total += length
    return total
