"""Embeddings from a feature-extraction package: tokenize a batch, run once, pool, normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.encoder_session import EncoderSession
from appliance.engine.providers import RuntimeOptions
from appliance.errors import PackageError
from appliance.model_package import Manifest


class Embedder:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions):
        if manifest.pooling is None:
            raise PackageError(package_dir.name, "feature-extraction package has no pooling record")
        self.pooling = manifest.pooling
        self.encoder = EncoderSession(package_dir, manifest, tokenizer, options)
        self.provider = self.encoder.provider

    def embed(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, int]:
        """Returns [len(texts), dim] float32 vectors and the number of tokens read."""
        ids, mask = self.encoder.encode(texts)  # [B, S] each
        vectors = self._pool(self.encoder.run(self.pooling.output, ids, mask), mask)
        if normalize or self.pooling.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32), int(mask.sum())

    def _pool(self, output: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling.mode == "graph":
            return output  # [B, D]
        if self.pooling.mode == "cls":
            return output[:, 0]  # [B, S, D] -> [B, D]
        weights = mask[:, :, None].astype(output.dtype)  # [B, S, 1]
        return (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
