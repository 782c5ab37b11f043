"""What embedders and classifiers share: an encoder graph fed padded batches of texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.package_session import open_package_session
from appliance.engine.providers import RuntimeOptions
from appliance.errors import InvalidRequest
from appliance.model_package import Manifest

MAX_BATCH_TEXTS = 256


class EncoderSession:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions):
        self.session = open_package_session(package_dir, manifest, options)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.tokenizer = tokenizer
        pad_id = manifest.pad_token_id if manifest.pad_token_id is not None else 0
        self.tokenizer.enable_padding(pad_id=pad_id)
        self.tokenizer.enable_truncation(max_length=manifest.context_length)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Padded token ids and attention mask, both [B, S]; refuses an empty or oversized batch."""
        if not texts:
            raise InvalidRequest("texts", "must hold at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidRequest("texts", f"holds {len(texts)} texts; at most {MAX_BATCH_TEXTS} per call")
        for index, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"texts[{index}]", "is empty")
        encodings = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in encodings], np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], np.int64)
        return ids, mask

    def run(self, output: str, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (result,) = self.session.run([output], feeds)
        return result
