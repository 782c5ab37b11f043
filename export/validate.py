"""Comparing an exported package with the PyTorch reference on fixed inputs.

Decoders: logits along the reference's greedy path (teacher forced), the share of steps whose
argmax agrees, and how many free-running greedy tokens match before the first divergence.
Encoders: cosine similarity of each sentence's embedding to the reference's.
The figures go into the manifest; thresholds decide whether the package may be written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.engine.providers import RuntimeOptions
from appliance.model_package import Manifest
from export.validation_texts import DECODER_PROMPT, SENTENCES

GREEDY_TOKENS = 32

# Thresholds per precision; None means the figure is recorded, not enforced (quantized decoders:
# random-weight test models have near-flat logits, so agreement says little about quality).
DECODER_THRESHOLDS = {"fp32": {"logits_rel_diff": 1e-3, "greedy_prefix_match": GREEDY_TOKENS},
                      "fp16": {"logits_rel_diff": 2e-2}, "int8": None, "int4": None}
ENCODER_THRESHOLDS = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "int4": 0.95}


def _tokenize(package_dir: Path, text: str) -> list[int]:
    from appliance.registry import load_tokenizer

    ids = load_tokenizer(package_dir).encode(text).ids
    return ids or [0]


def validate_decoder(source_dir: Path, package_dir: Path, manifest: Manifest) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from appliance.engine.decoder_runner import DecoderRunner

    prompt = _tokenize(package_dir, DECODER_PROMPT)
    steps = min(GREEDY_TOKENS, manifest.context_length - len(prompt) - 1)
    reference = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        generated = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                       max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
                                       pad_token_id=0)[0].tolist()
        ref_logits = reference(torch.tensor([generated])).logits[0].float().numpy()  # [T, vocab]
    path = generated[len(prompt):]
    runner = DecoderRunner(package_dir, manifest, RuntimeOptions(("cpu",)))
    ort_logits = [runner.prefill(prompt)]
    for token in path[:-1]:
        ort_logits.append(runner.decode(token).copy())  # decode() returns a reused buffer
    ort_logits = np.stack(ort_logits)  # [steps, vocab]
    ref_path_logits = ref_logits[len(prompt) - 1 : len(prompt) - 1 + len(path)]
    max_abs = float(np.abs(ort_logits - ref_path_logits).max())
    scale = float(np.abs(ref_path_logits).max()) or 1.0
    agreement = float(np.mean(ort_logits.argmax(-1) == np.asarray(path)))
    # Free-running greedy on the package alone.
    free = [int(np.argmax(runner.prefill(prompt)))]
    while len(free) < len(path):
        free.append(int(np.argmax(runner.decode(free[-1]))))
    prefix = next((i for i, (a, b) in enumerate(zip(free, path)) if a != b), len(path))
    return {"kind": "decoder", "prompt_tokens": len(prompt), "greedy_tokens": len(path),
            "logits_max_abs_diff": max_abs, "logits_rel_diff": max_abs / scale,
            "greedy_token_agreement": agreement, "greedy_prefix_match": prefix}


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
    from appliance.registry import load_tokenizer

    embedder = Embedder(package_dir, manifest, load_tokenizer(package_dir), RuntimeOptions(("cpu",)))
    ours, _ = embedder.embed(SENTENCES, normalize=True)
    ref = _reference_embeddings(source_dir, manifest)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    cosines = (ours * ref).sum(axis=1)
    return {"kind": "encoder", "sentences": len(SENTENCES), "cosine_mean": float(cosines.mean()),
            "cosine_min": float(cosines.min())}


def failures(figures: dict, task: str, precision: str) -> list[str]:
    """Human-readable threshold failures; empty when the package may be written."""
    problems = []
    if task == "text-generation":
        limits = DECODER_THRESHOLDS[precision] or {}
        if "logits_rel_diff" in limits and figures["logits_rel_diff"] > limits["logits_rel_diff"]:
            problems.append(f"logits differ by {figures['logits_rel_diff']:.2e} of their scale "
                            f"(limit {limits['logits_rel_diff']:.0e})")
        wanted = min(limits.get("greedy_prefix_match", 0), figures["greedy_tokens"])
        if figures["greedy_prefix_match"] < wanted:
            problems.append(f"greedy tokens diverge at {figures['greedy_prefix_match']} (want {wanted})")
    else:
        limit = ENCODER_THRESHOLDS[precision]
        if figures["cosine_mean"] < limit:
            problems.append(f"mean embedding cosine {figures['cosine_mean']:.4f} is below {limit}")
    return problems
