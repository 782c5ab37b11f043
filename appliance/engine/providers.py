"""Execution providers in the operator's order of preference, with fallback to what is present."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal, Optional

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
    # The GPU the CUDA and TensorRT providers compute on ([runtime] devices places each replica).
    device_id: int = 0
    # Whether a decoder prefills on its package's prefill graph where it carries one ([runtime] prefill_graph).
    prefill_graph: Literal["auto", "off"] = "auto"
    # Whether ORT's CPU threads flush subnormal floats to zero ([runtime] flush_denormals).
    flush_denormals: bool = True
    # When idle intra-op threads spin waiting for work: "always" (ORT's default) or "within_runs"
    # (they stop when a run returns: a decoder's decode and prefill sessions, each of whose runs is
    # followed by the other's on the same cores).
    thread_spinning: Literal["always", "within_runs"] = "always"


def device_name(provider: str, device_id: int) -> str:
    """Where a session computes, as [runtime] devices spells it: cpu, or cuda:N for CUDA and
    TensorRT (whose memory is CUDA memory)."""
    return "cpu" if provider == PROVIDER_NAMES["cpu"] else f"cuda:{device_id}"


def resolve_providers(preferred: tuple[str, ...]) -> list[str]:
    """Maps config names to ORT providers, keeping only those this onnxruntime build offers.

    CPU always ends the list: a GPU that is missing or broken degrades to CPU rather than failing.
    """
    available = set(ort.get_available_providers())
    chosen = [PROVIDER_NAMES[name] for name in preferred if PROVIDER_NAMES[name] in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def provider_list(options: RuntimeOptions, cuda_graph: bool = False) -> list:
    """ORT's `providers` argument: the resolved names, the GPU ones with their options (the device,
    and for CUDA whether to capture graphs)."""
    on_device = {"device_id": str(options.device_id)}
    with_graphs = {**on_device, "enable_cuda_graph": "1"} if cuda_graph else on_device
    gpu_options = {PROVIDER_NAMES["cuda"]: with_graphs, PROVIDER_NAMES["tensorrt"]: on_device}
    return [(name, gpu_options[name]) if name in gpu_options else name
            for name in resolve_providers(options.providers)]


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
    if options.flush_denormals:
        # Softmax over a long context yields subnormal probabilities, and x86 computes on those
        # through a microcode assist, tens of times slower: unflushed, attention took three times
        # as long in a 1,000-token prefill (bench_engine.py --prompt-tokens 1000 --flush-denormals off).
        session_options.add_session_config_entry("session.set_denormal_as_zero", "1")
    if options.thread_spinning == "within_runs":
        session_options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(model_path, session_options, providers=provider_list(options, cuda_graph))


# A one-node ONNX model, y = Identity(x) over float[1] at opset 17, serialized (the daemon does
# not depend on the onnx package; tests/appliance/engine/test_providers.py rebuilds it with onnx).
IDENTITY_MODEL = (b'\x08\x08:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05flushZ\x0f\n\x01x\x12\n\n\x08\x08'
                  b'\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11')


def flush_denormals_on_this_thread() -> None:
    """Makes this thread flush subnormal floats to zero, and every thread it starts from then on
    (a thread inherits its creator's floating-point mode). ORT sets the mode of its own pool
    threads per session, but that of a calling thread only once per process: on the thread that
    constructs the process's first session, and only if that session asks for it. The engine's
    step thread, which computes its share of every kernel, constructs none. So the daemon calls
    this on its main thread before any session exists and before it starts any other thread."""
    session_options = ort.SessionOptions()
    session_options.add_session_config_entry("session.set_denormal_as_zero", "1")
    ort.InferenceSession(IDENTITY_MODEL, session_options, providers=["CPUExecutionProvider"])


def query_gpu(field: str) -> Optional[str]:
    """nvidia-smi's answer for the first GPU (`name`, `compute_cap`, ...), or None where there is
    no NVIDIA GPU or driver to ask."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None
