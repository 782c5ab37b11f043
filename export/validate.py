"""Comparing an exported package with the PyTorch reference on fixed inputs.

Decoders: logits along the reference's greedy path (teacher forced), the share of steps whose
argmax agrees, and how many free-running greedy tokens match before the first divergence.
Encoders: cosine similarity of each sentence's embedding to the reference's.
Classifiers: logits difference relative to their scale, and argmax agreement.
The figures go into the manifest; thresholds decide whether the package may be written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.engine.batch_invariance import host_record, probe as probe_batch_invariance
from appliance.engine.providers import RuntimeOptions
from appliance.model_package import Manifest
from export.recipe import runs_on_gpu_only
from export.validation_texts import DECODER_PROMPT, SENTENCES

GREEDY_TOKENS = 32
# Rows of the validation runner: batch sizes 2 to 8, odd and even, for the batch-invariance probe.
BATCH_CHECK_ROWS = 8

TOP_K = 5
# Floors per precision. Quantized decoders are held to figures that stay meaningful on
# random-weight test models, whose greedy paths say little: the logits' direction (cosine) and the
# next-token distribution (top-5 overlap, KL divergence), averaged over the reference's greedy
# path. Measured (benchmarks/export/decoder_floors.py --smollm): correct int8 exports of the tiny
# llama / qwen2 / phi3 / mistral / gpt2 give cosine >= 0.998, top-5 >= 0.90, KL <= 0.008, and of
# a random 30-layer decoder in SmolLM-135M's shape 0.958, 0.57, 0.17; broken ones (wrong scales,
# a dropped layer) give at most 0.89, 0.31 and at least 0.43. Correct int4 exports of the tiny
# models give cosine >= 0.84, top-5 >= 0.40, KL <= 0.63 (the demo's 4-layer, 256-wide model
# 0.745, 0.26, 0.93), broken ones at most 0.67 and at least 1.25 KL. Each floor sits between the
# two. Random weights 30 layers deep lose their next-token distribution at int4 altogether (top-5
# 0.02, as a broken export does), so such benchmark models are exported with --force.
DECODER_THRESHOLDS = {
    "fp32": {"logits_rel_diff": 1e-3, "greedy_prefix_match": GREEDY_TOKENS},
    "fp16": {"logits_rel_diff": 2e-2},
    "int8": {"logits_cosine_mean": 0.93, "top5_overlap": 0.45, "kl_mean": 0.3},
    "int4": {"logits_cosine_mean": 0.70, "top5_overlap": 0.20, "kl_mean": 1.1},
}
ENCODER_THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "int4": 0.95}
CLASSIFIER_THRESHOLDS = {"fp32": 1e-3, "fp16": 2e-2}
CPU = RuntimeOptions(("cpu",))
# The decode graph alone: a package's prefill graph is validated on its own (prefill_graph_figures).
DECODE_GRAPH_ONLY = RuntimeOptions(("cpu",), prefill_graph="off")


def run(source_dir: Path, package_dir: Path, manifest: Manifest, phases) -> dict:
    if not _runnable_here(manifest):
        figures = {"kind": "skipped", "reason": f"{manifest.precision} graphs for {manifest.targets[0].name} "
                   "need a CUDA device to validate; none on the export host"}
        if problem := _load_problem(package_dir / manifest.model_file):
            figures["load_error"] = problem
        return figures
    if manifest.task == "text-generation":
        return validate_decoder(source_dir, package_dir, manifest, phases)
    if manifest.task == "feature-extraction":
        return validate_encoder(source_dir, package_dir, manifest)
    return validate_classifier(source_dir, package_dir, manifest)


def _load_problem(model_path: Path) -> str | None:
    """Why ONNX Runtime cannot load the graph at all, or None. What cannot be run here can still be
    loaded: the genai 0.15.2 builder's `--target cuda --precision fp32` graph, for one, names outputs
    no node produces. A kernel that only the GPU has is not a problem of the graph."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as KernelMissing

    try:
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except KernelMissing:
        return None
    except Exception as exc:  # ORT's Fail, InvalidGraph, InvalidProtobuf...
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        # ORT prefixes a status code, the file and a C++ location; the sentence after them is the news.
        return message.split("] : ")[-1].rsplit("() ", 1)[-1][:300]
    return None


def _runnable_here(manifest: Manifest) -> bool:
    import onnxruntime as ort

    on_gpu_only = runs_on_gpu_only(manifest.precision) or (manifest.backend == "builder"
                                                           and manifest.targets[0].name != "cpu")
    return not on_gpu_only or "CUDAExecutionProvider" in ort.get_available_providers()


def validate_decoder(source_dir: Path, package_dir: Path, manifest: Manifest, phases) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from appliance.engine.runners import open_decoder_runner

    prompt = package_tokenizer(package_dir).encode(DECODER_PROMPT).ids or [0]
    steps = min(GREEDY_TOKENS, manifest.context_length - len(prompt) - 1)
    phases.set_total(2 * steps)
    reference = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                       max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                       pad_token_id=0)[0].tolist()
        ref_logits = reference(torch.tensor([generated])).logits[0].float().numpy()  # [T, vocab]
    path = generated[len(prompt):]
    # One runner for both checks (alone, a sequence uses row 0), its KV sized for this check
    # rather than the model's whole context.
    runner = open_decoder_runner(package_dir, manifest, DECODE_GRAPH_ONLY, max_batch=BATCH_CHECK_ROWS,
                                 max_context=len(prompt) + steps + 1)

    def step(token: int, cached: int) -> np.ndarray:
        return runner.decode(np.asarray([token]), np.asarray([cached]))[0]

    ort_logits = [runner.prefill(0, prompt, 0).copy()]
    for offset, token in enumerate(path[:-1]):
        ort_logits.append(step(token, len(prompt) + offset).copy())  # decode() returns a reused buffer
        phases.advance()
    ort_logits = np.stack(ort_logits)  # [steps, vocab]
    # Vocabulary rows past the tokenizer's may be padding in the graph; compare the model's own.
    ref_path_logits = ref_logits[len(prompt) - 1 : len(prompt) - 1 + len(path), : ort_logits.shape[1]]
    agreement = float(np.mean(ort_logits.argmax(-1) == np.asarray(path)))
    # Free-running greedy on the package alone.
    free = [int(np.argmax(runner.prefill(0, prompt, 0)))]
    while len(free) < len(path):
        free.append(int(np.argmax(step(free[-1], len(prompt) + len(free) - 1))))
        phases.advance()
    prefix = next((i for i, (a, b) in enumerate(zip(free, path)) if a != b), len(path))
    # Some kernels (e.g. MatMulNBits block 128 with int8 activations) round a lone row differently
    # from rows in a tile, so a request's tokens can change when it is batched: record, on this
    # host, whether bit-identical logits hold and which padding makes them hold at what cost (the
    # daemon measures it again on its own host at load, see appliance/engine/batch_invariance.py).
    invariance = probe_batch_invariance(runner, "always")
    figures = {"kind": "decoder", "prompt_tokens": len(prompt), "greedy_tokens": len(path),
               **logit_figures(ort_logits, ref_path_logits),
               "greedy_token_agreement": agreement, "greedy_prefix_match": prefix,
               "batch_invariance": {**invariance.as_record(), "host": host_record(runner.provider)}}
    if manifest.prefill_graph is not None:
        figures["prefill_graph"] = prefill_graph_figures(package_dir, manifest, prompt, path, ref_path_logits)
    return figures


def prefill_graph_figures(package_dir: Path, manifest: Manifest, prompt: list[int], path: list[int],
                          reference: np.ndarray) -> dict:
    """The prefill graph along the same greedy path: the prompt in one chunk, then each token of
    the path as a one-token chunk (its logits are the last position's only, so the graph runs token
    by token), compared with the reference as the decode graph is."""
    from appliance.engine.runners import open_decoder_runner

    runner = open_decoder_runner(package_dir, manifest, CPU, max_context=len(prompt) + len(path) + 1)
    logits = [runner.prefill(0, prompt, 0)]
    for offset, token in enumerate(path[:-1]):
        logits.append(runner.prefill(0, [token], len(prompt) + offset))
    logits = np.stack(logits)
    return {"file": manifest.prefill_graph.file, **logit_figures(logits, reference),
            "greedy_token_agreement": float(np.mean(logits.argmax(-1) == np.asarray(path)))}


def logit_figures(ours: np.ndarray, reference: np.ndarray) -> dict:
    """How far the package's logits [steps, vocab] are from the reference's at each step."""
    ours, reference = ours.astype(np.float64), reference.astype(np.float64)
    max_abs = float(np.abs(ours - reference).max())
    cosines = (ours * reference).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(reference, axis=-1))
    top_ours = np.argsort(-ours, axis=-1)[:, :TOP_K]
    top_ref = np.argsort(-reference, axis=-1)[:, :TOP_K]
    overlap = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(top_ours, top_ref)])
    log_ours = ours - np.logaddexp.reduce(ours, axis=-1, keepdims=True)
    log_ref = reference - np.logaddexp.reduce(reference, axis=-1, keepdims=True)
    kl = (np.exp(log_ref) * (log_ref - log_ours)).sum(-1)  # KL(reference || package) per step
    return {"logits_max_abs_diff": max_abs, "logits_rel_diff": max_abs / (float(np.abs(reference).max()) or 1.0),
            "logits_cosine_mean": float(cosines.mean()), "logits_cosine_min": float(cosines.min()),
            "top5_overlap": float(overlap), "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}


def package_tokenizer(package_dir: Path):
    """The package's own tokenizer.json, as the daemon loads it (the writer and verify require the file)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(package_dir / "tokenizer.json"))


def _reference_embeddings(source_dir: Path, manifest: Manifest) -> np.ndarray:
    import torch

    if (source_dir / "modules.json").is_file():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(source_dir), device="cpu", local_files_only=True)
        return model.encode(SENTENCES, convert_to_numpy=True)
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source_dir)
    model = AutoModel.from_pretrained(source_dir, dtype=torch.float32).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    if manifest.pooling.mode == "cls":
        return hidden[:, 0].numpy()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)).numpy()


def validate_encoder(source_dir: Path, package_dir: Path, manifest: Manifest) -> dict:
    from appliance.engine.embedder import Embedder

    embedder = Embedder(package_dir, manifest, package_tokenizer(package_dir), CPU)
    ours, _ = embedder.embed(SENTENCES, normalize=True)
    ref = _reference_embeddings(source_dir, manifest)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cosines = (ours * ref).sum(axis=1)
    return {"kind": "encoder", "sentences": len(SENTENCES), "cosine_mean": float(cosines.mean()),
            "cosine_min": float(cosines.min())}


def validate_classifier(source_dir: Path, package_dir: Path, manifest: Manifest) -> dict:
    import torch
    import transformers

    from appliance.engine.classifier import Classifier

    classifier = Classifier(package_dir, manifest, package_tokenizer(package_dir), CPU)
    ours, mask = classifier.logits(SENTENCES)
    ids, _ = classifier.encode(SENTENCES)
    auto = (transformers.AutoModelForTokenClassification if classifier.per_token
            else transformers.AutoModelForSequenceClassification)
    model = auto.from_pretrained(source_dir, dtype=torch.float32).eval()
    # Same token ids as the package's tokenizer, so only the graph is being compared.
    with torch.no_grad():
        ref = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    valid = mask.astype(bool) if classifier.per_token else np.ones(len(SENTENCES), bool)
    diff = np.abs(ours - ref)[valid]
    scale = float(np.abs(ref[valid]).max()) or 1.0
    agreement = float(np.mean(ours.argmax(-1)[valid] == ref.argmax(-1)[valid]))
    return {"kind": "classifier", "sentences": len(SENTENCES), "logits_max_abs_diff": float(diff.max()),
            "logits_rel_diff": float(diff.max()) / scale, "label_agreement": agreement}


def _logit_problems(figures: dict, limits: dict) -> list[str]:
    problems = []
    # Written as "not within" so that a NaN figure (a graph that outputs NaN) fails too.
    if "logits_rel_diff" in limits and not figures["logits_rel_diff"] <= limits["logits_rel_diff"]:
        problems.append(f"logits differ by {figures['logits_rel_diff']:.2e} of their scale "
                        f"(limit {limits['logits_rel_diff']:.0e})")
    if "logits_cosine_mean" in limits and not figures["logits_cosine_mean"] >= limits["logits_cosine_mean"]:
        problems.append(f"logits cosine {figures['logits_cosine_mean']:.4f} along the greedy path "
                        f"(floor {limits['logits_cosine_mean']})")
    if "top5_overlap" in limits and not figures["top5_overlap"] >= limits["top5_overlap"]:
        problems.append(f"top-5 tokens overlap {figures['top5_overlap']:.2f} (floor {limits['top5_overlap']})")
    if "kl_mean" in limits and not figures["kl_mean"] <= limits["kl_mean"]:
        problems.append(f"next-token KL divergence {figures['kl_mean']:.3f} (limit {limits['kl_mean']})")
    return problems


def failures(figures: dict, task: str, precision: str) -> list[str]:
    """Human-readable threshold failures; empty when the package may be written."""
    kind = figures.get("kind")
    if kind == "skipped":
        return [f"ONNX Runtime cannot load the graph: {figures['load_error']}"] if "load_error" in figures else []
    problems = []
    if kind == "decoder":
        limits = DECODER_THRESHOLDS[precision]
        problems += _logit_problems(figures, limits)
        if "prefill_graph" in figures:
            problems += [f"prefill graph: {problem}" for problem in _logit_problems(figures["prefill_graph"], limits)]
        wanted = min(limits.get("greedy_prefix_match", 0), figures["greedy_tokens"])
        if figures["greedy_prefix_match"] < wanted:
            problems.append(f"greedy tokens diverge at {figures['greedy_prefix_match']} (want {wanted})")
    elif kind == "encoder":
        limit = ENCODER_THRESHOLDS[precision]
        if not figures["cosine_mean"] >= limit:
            problems.append(f"mean embedding cosine {figures['cosine_mean']:.4f} is below {limit}")
    elif kind == "classifier":
        limit = CLASSIFIER_THRESHOLDS.get(precision)
        if limit is not None and not figures["logits_rel_diff"] <= limit:
            problems.append(f"logits differ by {figures['logits_rel_diff']:.2e} of their scale (limit {limit:.0e})")
    return problems
