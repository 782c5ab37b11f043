"""GPU targets: run only where an NVIDIA GPU with the CUDA (and TensorRT) EP is present."""

import time

import numpy as np
import pytest

from appliance.model_package import open_package
from tests.conftest import export_or_fail

pytestmark = pytest.mark.gpu


def _tensorrt_or_skip():
    from export.tensorrt_backend import unavailable_reason

    if reason := unavailable_reason():
        pytest.skip(reason)


def test_fp16_cuda_decoder_validates_on_the_gpu(sources, tmp_path):
    manifest = open_package(export_or_fail(sources["llama"], tmp_path / "llama-fp16", "--precision", "fp16",
                                           "--target", "cuda"))
    assert manifest.validation["kind"] == "decoder"
    assert manifest.validation["logits_rel_diff"] < 2e-2


def test_minilm_tensorrt_engine_builds_loads_and_matches_cuda(sources, tmp_path):
    _tensorrt_or_skip()
    import onnxruntime as ort

    from appliance.registry import load_tokenizer

    out = export_or_fail(sources["minilm"], tmp_path / "minilm-trt", "--target", "tensorrt")
    manifest = open_package(out)
    engine = next(t for t in manifest.targets if t.name == "tensorrt")
    assert engine.compute_capability and engine.tensorrt_version and engine.engine_model in manifest.files
    tokenizer = load_tokenizer(out)
    ids = np.asarray([tokenizer.encode("Where is my order?").ids], np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    timings = {}
    outputs = {}
    for name, path, providers in (("tensorrt", out / engine.engine_model, ["TensorrtExecutionProvider"]),
                                  ("cuda", out / manifest.model_file, ["CUDAExecutionProvider"])):
        session = ort.InferenceSession(str(path), providers=providers)
        session.run(None, feeds)
        start = time.perf_counter()
        for _ in range(50):
            outputs[name] = session.run(["sentence_embedding"], feeds)[0]
        timings[name] = (time.perf_counter() - start) / 50
    cosine = float((outputs["tensorrt"] * outputs["cuda"]).sum() /
                   (np.linalg.norm(outputs["tensorrt"]) * np.linalg.norm(outputs["cuda"])))
    print(f"MiniLM latency: TensorRT {timings['tensorrt'] * 1e3:.2f} ms, CUDA EP {timings['cuda'] * 1e3:.2f} ms")
    assert cosine > 0.999


def test_decoder_tensorrt_engine_builds_and_loads(sources, tmp_path):
    _tensorrt_or_skip()
    from appliance.engine.providers import RuntimeOptions
    from appliance.engine.runners import open_decoder_runner

    out = export_or_fail(sources["llama"], tmp_path / "llama-trt", "--precision", "fp16", "--target", "tensorrt")
    manifest = open_package(out)
    assert any(t.name == "tensorrt" for t in manifest.targets)
    # Loads where the daemon would load it: TensorRT first, its state in CUDA memory.
    runner = open_decoder_runner(out, manifest, RuntimeOptions(("tensorrt", "cuda")), max_batch=2)
    assert runner.provider == "TensorrtExecutionProvider" and runner.device.ort_device == "cuda"
    logits = runner.prefill(0, [5, 17, 42], 0)
    for step in range(4):
        logits = runner.decode(np.asarray([int(np.argmax(logits))]), np.asarray([3 + step]))[0]
    assert np.isfinite(logits).all()
