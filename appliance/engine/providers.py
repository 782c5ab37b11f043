"""Execution providers in the operator's order of preference, with fallback to what is present."""

from __future__ import annotations

from dataclasses import dataclass

import onnxruntime as ort

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created: provider preference and CPU threads (0 lets ORT choose)."""

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0


def resolve_providers(preferred: tuple[str, ...]) -> list[str]:
    """Maps config names to ORT providers, keeping only those this onnxruntime build offers.

    CPU always ends the list: a GPU that is missing or broken degrades to CPU rather than failing.
    """
    available = set(ort.get_available_providers())
    chosen = [PROVIDER_NAMES[name] for name in preferred if PROVIDER_NAMES[name] in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(model_path: str, options: RuntimeOptions) -> ort.InferenceSession:
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.intra_op_threads:
        session_options.intra_op_num_threads = options.intra_op_threads
    # Our own engine thread drives the steps; ORT's inter-op pool would only add contention.
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3
    return ort.InferenceSession(model_path, session_options, providers=resolve_providers(options.providers))
