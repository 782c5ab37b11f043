"""Runs many decoder sequences over a builder graph with one KV buffer that is never copied.

One buffer per layer and K/V, [max_batch, kv_heads, context_length, head_dim]. Slots are rows:
running sequences occupy rows 0..n-1, and a decode step binds views of the first n rows both as
`past_key_values.L.*` input and as `present.L.*` output, so each step writes its new keys in
place. The attention mask is [n, context_length] with ones up to each row's own length (right
padding): GroupQueryAttention reads every row's length from it. Bindings are made once per batch
size and reused; only token ids and the mask change between steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.engine.package_session import open_package_session
from appliance.engine.providers import RuntimeOptions
from appliance.errors import PackageError
from appliance.model_package import Manifest

class SharedKVRunner:
    def __init__(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions, max_batch: int = 1,
                 context_length: int | None = None):
        layout = manifest.kv_layout
        if layout is None or not layout.shared_buffer:
            raise PackageError(package_dir.name, "SharedKVRunner needs a graph that shares past and present KV buffers")
        self.layout = layout
        self.max_batch = max_batch
        # The operator may cap the context below the model's to bound KV memory.
        self.context_length = min(context_length or manifest.context_length, manifest.context_length)
        self.session = open_package_session(package_dir, manifest, options)
        self.provider = self.session.get_providers()[0]
        dtype = np.dtype(layout.dtype)
        shape = (max_batch, layout.num_kv_heads, self.context_length, layout.head_dim)
        # The numpy arrays own the memory; OrtValues over row views let ORT read and write it.
        self._kv = [np.zeros(shape, dtype) for _ in range(2 * layout.num_layers)]
        self._ids = np.zeros((max_batch, 1), np.int64)
        self._mask = np.zeros((max_batch, self.context_length), np.int64)
        self._logits = np.zeros((max_batch, 1, manifest.vocab_size), np.float32)
        self._decode_bindings: dict[int, ort.IOBinding] = {}

    def _bind_kv(self, binding: ort.IOBinding, rows: slice) -> None:
        layout = self.layout
        for layer in range(layout.num_layers):
            for index, (past, present) in enumerate(((layout.past_key, layout.present_key),
                                                     (layout.past_value, layout.present_value))):
                view = ort.OrtValue.ortvalue_from_numpy(self._kv[2 * layer + index][rows])
                binding.bind_ortvalue_input(past % layer, view)
                binding.bind_ortvalue_output(present % layer, view)

    def _decode_binding(self, n: int) -> ort.IOBinding:
        binding = self._decode_bindings.get(n)
        if binding is None:
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self._ids[:n]))
            binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask[:n]))
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(self._logits[:n]))
            self._bind_kv(binding, slice(0, n))
            self._decode_bindings[n] = binding
        return binding

    def prefill(self, slot: int, token_ids: list[int], start: int) -> np.ndarray:
        """Writes token_ids at positions start.. of row `slot`; returns the last position's logits [vocab]."""
        ids = np.asarray([token_ids], np.int64)  # [1, S]
        # [1, start + S]: GQA tells a first prompt by mask length == S, a later chunk by more.
        mask = np.ones((1, start + len(token_ids)), np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output("logits", "cpu")
        self._bind_kv(binding, slice(slot, slot + 1))
        self.session.run_with_iobinding(binding)
        end = start + len(token_ids)
        self._mask[slot] = 0
        self._mask[slot, :end] = 1
        return binding.get_outputs()[0].numpy()[0, -1]

    def decode(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1; lengths[i] tokens are already cached in row i.

        Returns logits [n, vocab], a view that the next step overwrites.
        """
        n = len(token_ids)
        self._ids[:n, 0] = token_ids
        self._mask[np.arange(n), lengths] = 1
        self.session.run_with_iobinding(self._decode_binding(n))
        return self._logits[:n, 0]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copies row src's first `length` cached positions into row dst (slot compaction)."""
        for buffer in self._kv:
            buffer[dst, :, :length] = buffer[src, :, :length]
        self._mask[dst] = self._mask[src]

    def release(self, slot: int) -> None:
        self._mask[slot] = 0
