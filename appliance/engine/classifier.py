"""Labels with scores from a text- or token-classification package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.encoder_session import EncoderSession
from appliance.engine.providers import RuntimeOptions
from appliance.errors import PackageError
from appliance.model_package import Manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Classifier:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions):
        if not manifest.labels:
            raise PackageError(package_dir.name, f"{manifest.task} package has no labels")
        self.labels = manifest.labels
        self.per_token = manifest.task == "token-classification"
        self.encoder = EncoderSession(package_dir, manifest, tokenizer, options)
        self.provider = self.encoder.provider

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.encoder.encode(texts)

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits ([B, labels] or [B, S, labels] per token) and the attention mask [B, S]."""
        ids, mask = self.encoder.encode(texts)
        return self.encoder.run("logits", ids, mask), mask

    def classify(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """Per text, every label with its probability, most likely first (sequence tasks)."""
        logits, _ = self.logits(texts)
        ranked = []
        for row in softmax(logits.astype(np.float64)):
            order = np.argsort(-row)
            ranked.append([(self.labels[i], float(row[i])) for i in order])
        return ranked
