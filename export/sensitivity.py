"""The sensitivity pass: how much quantizing each MatMul alone moves the graph's output, and from
that table which MatMuls to keep one step up (int4 -> int8, int8 -> fp32).

The figure is the cosine of the graph's output (the pooled embedding where the graph has one,
else its first output, flattened) to the fp32 graph's, per built-in validation text. Quantizing
one node at a time costs one quantization and one pass over the texts per MatMul: 27 s for
all-MiniLM-L6-v2's 36 on a 2-core host.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np


def quantizable_matmuls(model) -> list[str]:
    """MatMul nodes with a constant 2-D weight: what the weight-only quantizers rewrite."""
    weights = {i.name for i in model.graph.initializer if len(i.dims) == 2}
    return [node.name for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights]


class Scorer:
    """Cosine of a candidate graph's output to the fp32 graph's, per text: (mean, min)."""

    def __init__(self, fp32_model, feeds: list[dict]):
        self.feed, self.lengths = _one_batch(feeds)
        outputs = {o.name: o for o in fp32_model.graph.output}
        self.output = "sentence_embedding" if "sentence_embedding" in outputs else next(iter(outputs))
        sequence = _sequence_dim(next(i for i in fp32_model.graph.input if i.name == "input_ids"))
        self.per_token = sequence is not None and _sequence_dim(outputs[self.output]) == sequence
        self.reference = self._outputs(fp32_model)
        self.description = (f"cosine of {self.output} to the fp32 graph's over {len(feeds)} validation texts, "
                            "one MatMul quantized at a time")

    def _outputs(self, model) -> list[np.ndarray]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One run per candidate: full graph optimization would cost more than it saves.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        batch = session.run([self.output], self.feed)[0].astype(np.float64)
        # Per text, its own positions only (not the padding) where the output is per token.
        return [(row[:length] if self.per_token else row).ravel() for row, length in zip(batch, self.lengths)]

    def __call__(self, model) -> tuple[float, float]:
        cosines = [float(a @ b / ((np.linalg.norm(a) * np.linalg.norm(b)) or 1.0))
                   for a, b in zip(self._outputs(model), self.reference)]
        return float(np.mean(cosines)), float(np.min(cosines))


def _sequence_dim(value) -> str | None:
    """The symbolic name of a graph input's or output's second axis (None where it is fixed)."""
    dims = value.type.tensor_type.shape.dim
    return dims[1].dim_param or None if len(dims) > 1 else None


def _one_batch(feeds: list[dict]) -> tuple[dict, list[int]]:
    """The per-text feeds as one right-padded batch (masked where the graph takes a mask)."""
    lengths = [feed["input_ids"].shape[1] for feed in feeds]
    width = max(lengths)
    batch = {}
    for name in feeds[0]:
        if name.startswith("past_key_values."):
            batch[name] = np.concatenate([feed[name] for feed in feeds])
        else:
            pad = 0 if name != "position_ids" else None
            batch[name] = np.stack([np.pad(feed[name][0], (0, width - feed[name].shape[1]),
                                           mode="constant" if pad is not None else "edge") for feed in feeds])
    return batch, lengths


def measure(scorer: Scorer, nodes: list[str], quantize_only: Callable[[str], object]) -> list[dict]:
    """The per-node table, most sensitive (lowest mean cosine) first."""
    rows = []
    for node in nodes:
        mean, worst = scorer(quantize_only(node))
        rows.append({"node": node, "cosine_mean": round(mean, 6), "cosine_min": round(worst, 6)})
    return sorted(rows, key=lambda row: (row["cosine_mean"], row["cosine_min"]))


def choose(ranked: list[str], keep: Optional[int], min_cosine: Optional[float],
           score: Callable[[list[str]], tuple[float, float]]) -> tuple[str, list[str], list[dict]]:
    """(rule, kept, what was tried) over `ranked` (most sensitive first; MatMuls or groups of them):
    the `keep` most sensitive, or the fewest most sensitive that bring the whole graph to
    `min_cosine` (all of them when none do). score(kept) is the whole graph's (mean, min) with
    `kept` one step up."""
    if keep is not None:
        return f"keep_sensitive={keep}", ranked[:keep], []
    if min_cosine is None:
        return "none", [], []
    tried: dict[int, tuple[float, float]] = {}

    def reaches(count: int) -> bool:
        if count not in tried:
            tried[count] = score(ranked[:count])
        return tried[count][0] >= min_cosine

    # Keeping more nodes only brings the graph closer to fp32, so the fewest that reach the
    # target is found by bisection (log2 of the node count trials, not one per node).
    low, high = 0, len(ranked)
    if not reaches(low):
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if reaches(middle) else (middle, high)
        low = high
    record = [{"kept": count, "cosine_mean": round(mean, 6), "cosine_min": round(worst, 6)}
              for count, (mean, worst) in sorted(tried.items())]
    return f"min_cosine={min_cosine}", ranked[:low], record
