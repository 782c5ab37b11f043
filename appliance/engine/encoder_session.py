"""What embedders and classifiers share: an encoder graph fed length-sorted sub-batches of texts.

One call may hold hundreds of long texts. Run as one padded batch, its activations grow with
texts x longest text (and attention with the square of the length): 256 texts of 512 tokens took
about 10 GB. So texts are sorted by length and packed into sub-batches whose padded size
(rows x longest row) stays within a token budget, which bounds memory and keeps padding small;
the caller's `stop` is asked between sub-batches, so a cancelled call or a passed deadline ends
the work within one sub-batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from appliance.engine.package_session import open_package_session
from appliance.engine.providers import RuntimeOptions
from appliance.errors import ApplianceError, InvalidRequest
from appliance.model_package import Manifest

MAX_BATCH_TEXTS = 256
DEFAULT_BATCH_TOKENS = 8192

# Per sub-batch: output [b, S, ...] and its attention mask [b, S] -> one row per text [b, ...].
Reduce = Callable[[np.ndarray, np.ndarray], np.ndarray]
StopCheck = Callable[[], bool]


class EncodeStopped(ApplianceError):
    """The call was cancelled or its deadline passed; the work stopped between sub-batches."""

    status_name = "DEADLINE_EXCEEDED"


def plan_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices into `lengths`, longest first, grouped so that each group's padded size
    (len(group) x its longest) stays within max_batch_tokens; a longer text runs alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    start = 0
    while start < len(order):
        rows = max(1, max_batch_tokens // max(lengths[order[start]], 1))  # the first row is the longest
        batches.append(order[start:start + rows])
        start += rows
    return batches


def _pad(token_ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(t) for t in token_ids)
    ids = np.full((len(token_ids), width), pad_id, np.int64)  # [B, S]
    mask = np.zeros((len(token_ids), width), np.int64)  # [B, S]
    for row, tokens in enumerate(token_ids):
        ids[row, :len(tokens)] = tokens
        mask[row, :len(tokens)] = 1
    return ids, mask


class EncoderSession:
    def __init__(self, package_dir: Path, manifest: Manifest, tokenizer: Tokenizer, options: RuntimeOptions,
                 max_batch_tokens: int = DEFAULT_BATCH_TOKENS):
        self.session = open_package_session(package_dir, manifest, options)
        self.provider = self.session.get_providers()[0]
        self._input_names = {i.name for i in self.session.get_inputs()}
        # Padding is ours (per sub-batch) and nothing is cut: an over-long text is refused. Set on
        # a copy: the caller's tokenizer (which another component may share) keeps its settings.
        self.tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self.pad_id = manifest.pad_token_id if manifest.pad_token_id is not None else 0
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_text_tokens = manifest.context_length
        self.max_batch_tokens = max_batch_tokens
        # Without shrinkage the CPU arena keeps the largest sub-batch's activations for the
        # process's life. A call's last run shrinks it; the runs before reuse it (a stopped call
        # leaves at most one sub-batch's worth until the next call ends).
        self._release_options = ort.RunOptions()
        self._release_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def tokenize(self, texts: list[str], field: str = "texts") -> list[list[int]]:
        """Token ids per text; refuses an empty or oversized batch, an empty text, or a text
        longer than the model reads (`field[i]` names it)."""
        if not texts:
            raise InvalidRequest(field, "must hold at least one text")
        if len(texts) > MAX_BATCH_TEXTS:
            raise InvalidRequest(field, f"holds {len(texts)} texts; at most {MAX_BATCH_TEXTS} per call")
        for index, text in enumerate(texts):
            if not text:
                raise InvalidRequest(f"{field}[{index}]", "is empty")
        token_ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        for index, tokens in enumerate(token_ids):
            if len(tokens) > self.max_text_tokens:
                raise InvalidRequest(f"{field}[{index}]", f"has {len(tokens)} tokens; the model reads at most "
                                                          f"{self.max_text_tokens} per text")
        return token_ids

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """All texts as one padded batch: token ids and attention mask, both [B, S]."""
        return _pad(self.tokenize(texts), self.pad_id)

    def run(self, output: str, ids: np.ndarray, mask: np.ndarray, release: bool = True) -> np.ndarray:
        """`output` for one padded batch; `release` hands the arena's free memory back afterwards."""
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        (result,) = self.session.run([output], feeds, self._release_options if release else None)
        return result

    def run_batched(self, output: str, token_ids: list[list[int]], reduce: Reduce,
                    stop: Optional[StopCheck] = None) -> np.ndarray:
        """`reduce` of each text's output, one row per text in input order, computed in
        sub-batches within the token budget; raises EncodeStopped once `stop()` says so."""
        result: Optional[np.ndarray] = None  # [B, ...], filled sub-batch by sub-batch
        batches = plan_batches([len(t) for t in token_ids], self.max_batch_tokens)
        for number, batch in enumerate(batches, 1):
            if stop is not None and stop():
                raise EncodeStopped("stopped: the call was cancelled or its deadline passed")
            ids, mask = _pad([token_ids[i] for i in batch], self.pad_id)  # [b, S] each
            reduced = reduce(self.run(output, ids, mask, release=number == len(batches)), mask)  # [b, ...]
            if result is None:
                result = np.empty((len(token_ids), *reduced.shape[1:]), reduced.dtype)
            result[batch] = reduced  # a copy: the sub-batch's output is freed before the next runs
        return result
