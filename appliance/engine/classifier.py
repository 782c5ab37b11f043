"""Labels with scores from a text- or token-classification package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.embedder import MAX_BATCH_TEXTS
from appliance.engine.providers import RuntimeOptions, create_session
from appliance.errors import InvalidRequest, PackageError
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
        self.session = create_session(str(package_dir / manifest.model_file), options)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizer
        pad_id = manifest.pad_token_id if manifest.pad_token_id is not None else 0
        self.tokenizer.enable_padding(pad_id=pad_id)
        self.tokenizer.enable_truncation(max_length=manifest.context_length)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded token ids and attention mask, both [B, S]."""
        if not texts:
            raise InvalidRequest("texts", "must hold at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidRequest("texts", f"holds {len(texts)} texts; at most {MAX_BATCH_TEXTS} per call")
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], np.int64)
        return ids, mask

    def logits(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits ([B, labels] or [B, S, labels] per token) and the attention mask [B, S]."""
        ids, mask = self.encode(texts)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (logits,) = self.session.run(["logits"], feeds)
        return logits, mask

    def classify(self, texts: list[str]) -> list[list[tuple[str, float]]]:
        """Per text, every label with its probability, most likely first (sequence tasks)."""
        logits, _ = self.logits(texts)
        ranked = []
        for row in softmax(logits.astype(np.float64)):
            order = np.argsort(-row)
            ranked.append([(self.labels[i], float(row[i])) for i in order])
        return ranked
