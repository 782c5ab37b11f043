"""Embeddings from a feature-extraction package: tokenize, run in sub-batches, pool, normalise."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.encoder_session import DEFAULT_BATCH_TOKENS, EncoderSession, StopCheck
from appliance.engine.providers import RuntimeOptions
from appliance.errors import PackageError
from appliance.model_package import Manifest


class Embedder:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS):
        if manifest.pooling is None:
            raise PackageError(package_dir.name, "feature-extraction package has no pooling record")
        self.pooling = manifest.pooling
        self.encoder = EncoderSession(package_dir, manifest, tokenizer, options, max_batch_tokens)
        self.provider = self.encoder.provider

    def embed(self, texts: list[str], normalize: bool, stop: Optional[StopCheck] = None,
              field: str = "texts") -> tuple[np.ndarray, int]:
        """Returns [len(texts), dim] float32 vectors and the number of tokens read."""
        token_ids = self.encoder.tokenize(texts, field)
        vectors = self.encoder.run_batched(self.pooling.output, token_ids, self._pool, stop)  # [B, D]
        if normalize or self.pooling.normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors.astype(np.float32), sum(len(t) for t in token_ids)

    def _pool(self, output: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self.pooling.mode == "graph":
            return output  # [B, D]
        if self.pooling.mode == "cls":
            return output[:, 0]  # [B, S, D] -> [B, D]
        weights = mask[:, :, None].astype(output.dtype)  # [B, S, 1]
        return (output * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
