"""Embeddings from a feature-extraction package: tokenize a batch, run once, pool, normalise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.providers import RuntimeOptions, create_session
from appliance.errors import InvalidRequest, PackageError
from appliance.model_package import Manifest

MAX_BATCH_TEXTS = 256


class Embedder:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions):
        if manifest.pooling is None:
            raise PackageError(package_dir.name, "feature-extraction package has no pooling record")
        self.pooling = manifest.pooling
        self.context_length = manifest.context_length
        self.session = create_session(str(package_dir / manifest.model_file), options)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizer
        pad_id = manifest.pad_token_id if manifest.pad_token_id is not None else 0
        self.tokenizer.enable_padding(pad_id=pad_id)
        self.tokenizer.enable_truncation(max_length=self.context_length)

    def embed(self, texts: list[str], normalize: bool) -> tuple[np.ndarray, int]:
        """Returns [len(texts), dim] float32 vectors and the number of tokens read."""
        if not texts:
            raise InvalidRequest("texts", "must hold at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidRequest("texts", f"holds {len(texts)} texts; at most {MAX_BATCH_TEXTS} per call")
        for index, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"texts[{index}]", "is empty")
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], np.int64)  # [B, S]
        mask = np.asarray([e.attention_mask for e in encodings], np.int64)  # [B, S]
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (output,) = self.session.run([self.pooling.output], feeds)
        vectors = self._pool(output, mask)
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
