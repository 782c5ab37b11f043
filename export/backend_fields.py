"""What an export backend determines about the graph it wrote (export/builder_backend.py,
export/optimum_backend.py): the manifest fields only the backend knows. The exporter adds the rest
(IO signature, files, targets, validation) and builds the Manifest from both."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, Optional

from appliance.model_package import KVLayout, Pooling, PrefillGraph


@dataclass
class BackendFields:
    model_file: str
    context_length: int
    vocab_size: int
    quantization: dict  # the recipe as recorded (quantize.QuantRecipe.as_record), {} for fp32 / fp16
    pad_token_id: Optional[int] = None
    # Decoders
    kv_layout: Optional[KVLayout] = None
    eos_token_ids: Optional[list[int]] = None
    bos_token_id: Optional[int] = None
    logits: Optional[Literal["all", "last"]] = None
    prefill_graph: Optional[PrefillGraph] = None
    # Encoders: embedding models, then classifiers
    pooling: Optional[Pooling] = None
    embedding_dim: Optional[int] = None
    labels: Optional[list[str]] = None

    def manifest_fields(self) -> dict:
        """The fields set, as Manifest keywords: what is left unset keeps the Manifest's default."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
