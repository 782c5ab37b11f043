"""Runs one decoder sequence over a builder graph with a KV cache that is never copied.

For builder graphs (GroupQueryAttention) one buffer per layer and K/V of shape
[1, kv_heads, context_length, head_dim] is bound both as `past_key_values.L.*` input and as
`present.L.*` output, so each step writes its new keys in place. Decode steps reuse bindings made
once per sequence; only the token id and the mask are updated in place between steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.engine.providers import RuntimeOptions, create_session
from appliance.errors import PackageError
from appliance.model_package import Manifest

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class SharedKVRunner:
    def __init__(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions):
        layout = manifest.kv_layout
        if layout is None or not layout.shared_buffer:
            raise PackageError(package_dir.name, "SharedKVRunner needs a graph that shares past and present KV buffers")
        self.layout = layout
        self.context_length = manifest.context_length
        self.session = create_session(str(package_dir / manifest.model_file), options)
        self.provider = self.session.get_providers()[0]
        dtype = _NUMPY_DTYPES[layout.dtype]
        shape = (1, layout.num_kv_heads, self.context_length, layout.head_dim)
        # The numpy arrays own the memory; the OrtValues are views that ORT reads and writes.
        self._kv_arrays = [np.zeros(shape, dtype) for _ in range(2 * layout.num_layers)]
        self._kv_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._kv_arrays]
        self._step_ids = np.zeros((1, 1), np.int64)
        self._step_mask = np.zeros((1, self.context_length), np.int64)
        self._step_logits = np.zeros((1, 1, manifest.vocab_size), np.float32)
        self._decode_binding = self._bind(self._step_ids, self._step_mask, self._step_logits)
        self._length = 0

    def _bind(self, ids: np.ndarray, mask: np.ndarray, logits: np.ndarray | None) -> ort.IOBinding:
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if logits is None:
            binding.bind_output("logits", "cpu")
        else:
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(logits))
        layout = self.layout
        for layer in range(layout.num_layers):
            key, value = self._kv_values[2 * layer], self._kv_values[2 * layer + 1]
            binding.bind_ortvalue_input(layout.past_key % layer, key)
            binding.bind_ortvalue_output(layout.present_key % layer, key)
            binding.bind_ortvalue_input(layout.past_value % layer, value)
            binding.bind_ortvalue_output(layout.present_value % layer, value)
        return binding

    @property
    def length(self) -> int:
        """Tokens held in the KV cache for the current sequence."""
        return self._length

    def prefill(self, prompt_ids: list[int]) -> np.ndarray:
        """Starts a new sequence; returns the last position's logits [vocab]."""
        ids = np.asarray([prompt_ids], np.int64)  # [1, P]
        mask = np.ones_like(ids)  # [1, P]: GQA tells a first prompt by mask length == P
        binding = self._bind(ids, mask, None)
        self.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[0].numpy()  # [1, P, vocab]
        self._length = len(prompt_ids)
        self._step_mask[:] = 0
        self._step_mask[0, : self._length] = 1
        return logits[0, -1]

    def decode(self, token_id: int) -> np.ndarray:
        """Appends one token; returns its logits [vocab], a view that the next step overwrites."""
        self._step_ids[0, 0] = token_id
        # Right-padded mask over the whole buffer: GQA reads the sequence length from its sum.
        self._step_mask[0, self._length] = 1
        self.session.run_with_iobinding(self._decode_binding)
        self._length += 1
        return self._step_logits[0, 0]
