"""Labels with scores from a text- or token-classification package."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.encoder_session import DEFAULT_BATCH_TOKENS, EncoderSession, StopCheck
from appliance.engine.providers import RuntimeOptions
from appliance.errors import InvalidRequest, PackageError
from appliance.model_package import Manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Classifier:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS):
        if not manifest.labels:
            raise PackageError(package_dir.name, f"{manifest.task} package has no labels")
        self.labels = manifest.labels
        self.per_token = manifest.task == "token-classification"
        self.encoder = EncoderSession(package_dir, manifest, tokenizer, options, max_batch_tokens)
        self.provider = self.encoder.provider

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(texts)

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits ([B, labels] or [B, S, labels] per token) and the attention mask [B, S], from
        one padded batch (validation and warm-up; requests go through classify)."""
        ids, mask = self.encoder.encode(texts)
        return self.encoder.run("logits", ids, mask), mask

    def classify(self, texts: list[str], stop: Optional[StopCheck] = None) -> tuple[list[list[tuple[str, float]]], int]:
        """Per text, every label with its probability, most likely first (sequence tasks), and the
        tokens read."""
        token_ids = self.encoder.tokenize(texts)
        logits = self.encoder.run_batched("logits", token_ids, lambda out, mask: out, stop)  # [B, labels]
        ranked = []
        for row in softmax(logits.astype(np.float64)):
            order = np.argsort(-row)
            ranked.append([(self.labels[i], float(row[i])) for i in order])
        return ranked, sum(len(t) for t in token_ids)


MIN_ZERO_SHOT_LABELS = 2
MAX_LABELS = 256


def zero_shot(embedder, texts: list[str], labels: list[tuple[str, str]],
              stop: Optional[StopCheck] = None) -> tuple[list[list[tuple[str, float]]], int]:
    """Labels texts by cosine similarity of their embeddings to each label's description.

    labels: (name, description) pairs; an empty description uses the name. Returns per text every
    label with its cosine similarity, best first, and the tokens read.
    """
    if len(labels) < MIN_ZERO_SHOT_LABELS:
        raise InvalidRequest("labels", f"zero-shot classification needs at least {MIN_ZERO_SHOT_LABELS} labels")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest("labels", f"holds {len(labels)} labels; at most {MAX_LABELS}")
    for index, (name, _) in enumerate(labels):
        if not name:
            raise InvalidRequest(f"labels[{index}].name", "must not be empty")
    text_vectors, text_tokens = embedder.embed(texts, normalize=True, stop=stop)  # [T, D]
    label_vectors, label_tokens = embedder.embed([d or n for n, d in labels], normalize=True, stop=stop,
                                                 field="labels")  # [L, D]
    scores = text_vectors @ label_vectors.T  # [T, L] cosine similarities
    ranked = []
    for row in scores:
        order = np.argsort(-row, kind="stable")
        ranked.append([(labels[i][0], float(row[i])) for i in order])
    return ranked, text_tokens + label_tokens
