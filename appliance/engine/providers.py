"""Execution providers in the operator's order of preference, with fallback to what is present."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import onnxruntime as ort

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are created: provider preference, CPU threads (0 lets ORT choose) and whether
    decoder steps replay CUDA graphs (auto: where the graph allows it; on: refuse a package that
    cannot; off: never)."""

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0
    cuda_graph: Literal["auto", "on", "off"] = "auto"


def resolve_providers(preferred: tuple[str, ...]) -> list[str]:
    """Maps config names to ORT providers, keeping only those this onnxruntime build offers.

    CPU always ends the list: a GPU that is missing or broken degrades to CPU rather than failing.
    """
    available = set(ort.get_available_providers())
    chosen = [PROVIDER_NAMES[name] for name in preferred if PROVIDER_NAMES[name] in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def create_session(model_path: str, options: RuntimeOptions, cuda_graph: bool = False) -> ort.InferenceSession:
    """cuda_graph asks the CUDA provider to capture and replay graphs (runs say which, by
    `gpu_graph_id`); ORT refuses it at load unless every compute node runs on CUDA."""
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.intra_op_threads:
        session_options.intra_op_num_threads = options.intra_op_threads
    # Our own engine thread drives the steps; ORT's inter-op pool would only add contention.
    session_options.inter_op_num_threads = 1
    session_options.log_severity_level = 3
    providers: list = resolve_providers(options.providers)
    if cuda_graph:
        providers = [(name, {"enable_cuda_graph": "1"}) if name == PROVIDER_NAMES["cuda"] else name
                     for name in providers]
    return ort.InferenceSession(model_path, session_options, providers=providers)
