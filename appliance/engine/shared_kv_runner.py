"""Runs many decoder sequences over a builder graph with one KV buffer that is never copied.

One buffer per layer and K/V, [max_batch, kv_heads, context_length, head_dim]. Slots are rows:
running sequences occupy rows 0..n-1, and a decode step binds views of the first n rows both as
`past_key_values.L.*` input and as `present.L.*` output, so each step writes its new keys in
place. The attention mask is [n, context_length] with ones up to each row's own length (right
padding): GroupQueryAttention reads every row's length from it. Bindings are made once per batch
size and reused; only token ids and the mask change between steps.

Some CPU kernels compute rows in tiles (MatMulNBits takes them two at a time on some hosts) and a
lone row, a batch of one or the odd row out, through another kernel that rounds differently. With
`row_quantum` q > 1 every decode step runs a multiple of q rows, the spare ones computed and
thrown away, so each row takes the same path whatever the batch (see batch_invariance.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.engine.package_session import open_package_session
from appliance.engine.providers import RuntimeOptions
from appliance.errors import PackageError
from appliance.model_package import Manifest


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


class SharedKVRunner:
    # Row quanta a decode step may be padded to (the tile sizes seen in ORT's CPU kernels).
    row_quanta = (1, 2, 4)

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
        self.vocab_size = manifest.vocab_size
        self.row_quantum = 1
        self._allocate(max_batch)

    def _allocate(self, rows: int) -> None:
        layout = self.layout
        shape = (rows, layout.num_kv_heads, self.context_length, layout.head_dim)
        # The numpy arrays own the memory; OrtValues over row views let ORT read and write it.
        self._kv = [np.zeros(shape, np.dtype(layout.dtype)) for _ in range(2 * layout.num_layers)]
        self._ids = np.zeros((rows, 1), np.int64)
        self._mask = np.zeros((rows, self.context_length), np.int64)
        self._cached = np.zeros(rows, np.int64)  # positions each row holds (ones in its mask)
        self._logits = np.zeros((rows, 1, self.vocab_size), np.float32)
        self._decode_bindings: dict[int, ort.IOBinding] = {}

    def set_row_quantum(self, quantum: int) -> None:
        """Pads every decode step to a multiple of `quantum` rows. Empties every row: call it
        before any sequence is held."""
        if quantum not in self.row_quanta:
            raise ValueError(f"row quantum {quantum} is not one of {self.row_quanta}")
        self.row_quantum = quantum
        rows = _round_up(self.max_batch, quantum)
        if rows > len(self._ids):  # the buffers only grow: a KV cache may be gigabytes
            self._kv = []  # freed before the larger ones are allocated
            self._allocate(rows)
        self._mask[:] = 0
        self._cached[:] = 0

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
        self._cached[slot] = end
        return binding.get_outputs()[0].numpy()[0, -1]

    def decode(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1; lengths[i] tokens are already cached in row i.

        Returns logits [n, vocab], a view that the next step overwrites.
        """
        n = len(token_ids)
        padded = min(_round_up(n, self.row_quantum), len(self._ids))
        self._ids[:n, 0] = token_ids
        self._mask[np.arange(n), lengths] = 1
        self._cached[:n] = lengths + 1
        if padded == n:  # the usual step: no spare rows to set up and clear
            self.session.run_with_iobinding(self._decode_binding(n))
            return self._logits[:n, 0]
        # A spare row writes one throw-away position just past what it holds: an empty row's
        # position 0, or a prefilling row's next position, which its next chunk overwrites.
        spare = np.arange(n, padded)
        self._ids[spare, 0] = 0
        self._mask[spare, self._cached[spare]] = 1
        self.session.run_with_iobinding(self._decode_binding(padded))
        self._mask[spare, self._cached[spare]] = 0
        return self._logits[:n, 0]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copies row src's first `length` cached positions into row dst (slot compaction)."""
        for buffer in self._kv:
            buffer[dst, :, :length] = buffer[src, :, :length]
        self._mask[dst] = self._mask[src]
        self._cached[dst] = self._cached[src]

    def release(self, slot: int) -> None:
        self._mask[slot] = 0
        self._cached[slot] = 0
