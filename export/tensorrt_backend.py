"""TensorRT engines, built offline on the GPU host through ONNX Runtime's TensorRT EP.

The engine is serialized into an EPContext model (`engines/tensorrt/model_ctx.onnx` plus the
engine blob), built with an optimization profile for batch, sequence and past length, fp16, and a
timing cache. The target record stores what the engine is bound to: the GPU's compute capability,
the TensorRT and ORT versions. TensorRT does not run ORT contrib ops (GroupQueryAttention,
MatMulNBits); ORT partitions those nodes to the CUDA EP, so builder graphs still work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from appliance.engine.providers import query_gpu
from appliance.model_package import IOSignature, Target
from export.source import ExportError

ENGINE_DIR = "engines/tensorrt"
MAX_BATCH = 16


def unavailable_reason() -> Optional[str]:
    """Why this host cannot build a TensorRT engine, or None when it can."""
    import onnxruntime as ort

    if "TensorrtExecutionProvider" not in ort.get_available_providers():
        return "the tensorrt target needs onnxruntime-gpu with the TensorRT EP (install the gpu extra on a GPU host)"
    if query_gpu("name") is None:
        return "the tensorrt target needs an NVIDIA GPU, and nvidia-smi finds none on this host"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the tensorrt target needs the tensorrt Python package (the gpu extra)"
    return None


def profiles_for(signature: IOSignature, context_length: int, max_sequence: int) -> dict[str, list[list[int]]]:
    """[min, opt, max] shapes per input: batch 1..16, sequence 1..max_sequence, past up to the context."""
    profiles = {}
    for spec in signature.inputs:
        shapes = [[], [], []]
        for dim in spec.shape:
            if isinstance(dim, int):
                bounds = (dim, dim, dim)
            elif "batch" in str(dim):
                bounds = (1, 1, MAX_BATCH)
            elif "past" in str(dim) or "total" in str(dim):
                bounds = (1, context_length // 2, context_length)
            else:
                bounds = (1, min(128, max_sequence), max_sequence)
            for shape, bound in zip(shapes, bounds):
                shape.append(bound)
        profiles[spec.name] = shapes
    return profiles


def _profile_option(profiles: dict, index: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[index])}" for name, shapes in profiles.items())


def build_engine(package_dir: Path, model_file: str, signature: IOSignature, context_length: int,
                 onnxruntime_version: str) -> Target:
    """Builds the engine into package_dir/engines/tensorrt; returns the target record."""
    import onnxruntime as ort
    import tensorrt

    engine_dir = package_dir / ENGINE_DIR
    engine_dir.mkdir(parents=True, exist_ok=True)
    profiles = profiles_for(signature, context_length, min(context_length, 2048))
    options = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(engine_dir),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(engine_dir),
        "trt_dump_ep_context_model": True,
        "trt_ep_context_file_path": str(engine_dir / "model_ctx.onnx"),
        "trt_ep_context_embed_mode": 0,
        "trt_profile_min_shapes": _profile_option(profiles, 0),
        "trt_profile_opt_shapes": _profile_option(profiles, 1),
        "trt_profile_max_shapes": _profile_option(profiles, 2),
    }
    try:
        # Creating the session is what builds and serializes the engine.
        ort.InferenceSession(str(package_dir / model_file),
                             providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider"])
    except Exception as exc:  # TensorRT reports build failures as generic runtime errors
        raise ExportError(f"TensorRT engine build failed: {str(exc).splitlines()[0][:300]}") from None
    if not (engine_dir / "model_ctx.onnx").is_file():
        raise ExportError("TensorRT built no EPContext model; is the graph supported by TensorRT at all?")
    return Target(name="tensorrt", onnxruntime_version=onnxruntime_version,
                  compute_capability=query_gpu("compute_cap"), gpu_name=query_gpu("name"),
                  tensorrt_version=tensorrt.__version__, engine_model=f"{ENGINE_DIR}/model_ctx.onnx",
                  profiles=profiles)
