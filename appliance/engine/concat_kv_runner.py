"""Runs one decoder sequence over a graph whose KV cache grows by concatenation (Optimum exports).

Such graphs take `past_key_values.L.*` of length P and return `present.L.*` of length P + S, so
the cache cannot be preallocated and shared. The presents stay OrtValues and are bound as the
next step's pasts, so nothing is copied through numpy between steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.engine.providers import RuntimeOptions, create_session
from appliance.model_package import Manifest

_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


class ConcatKVRunner:
    def __init__(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions):
        self.layout = manifest.kv_layout
        self.context_length = manifest.context_length
        self.session = create_session(str(package_dir / manifest.model_file), options)
        self.provider = self.session.get_providers()[0]
        inputs = {i.name for i in self.session.get_inputs()}
        self._takes_positions = "position_ids" in inputs
        self._kv_dtype = _NUMPY_DTYPES[self.layout.dtype]
        self._past: list[ort.OrtValue] = []
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def _kv_names(self):
        layout = self.layout
        for layer in range(layout.num_layers):
            yield layout.past_key % layer, layout.present_key % layer
            yield layout.past_value % layer, layout.present_value % layer

    def _run(self, ids: list[int]) -> np.ndarray:
        total = self._length + len(ids)
        feeds = {
            "input_ids": np.asarray([ids], np.int64),  # [1, S]
            "attention_mask": np.ones((1, total), np.int64),  # [1, P + S]
        }
        if self._takes_positions:
            feeds["position_ids"] = np.arange(self._length, total, dtype=np.int64)[None, :]  # [1, S]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits", "cpu")
        for index, (past_name, present_name) in enumerate(self._kv_names()):
            binding.bind_ortvalue_input(past_name, self._past[index])
            binding.bind_output(present_name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self._past = list(outputs[1:])  # presents, in bind order, become the next pasts
        self._length = total
        return outputs[0].numpy()[0, -1]  # [vocab]

    def prefill(self, prompt_ids: list[int]) -> np.ndarray:
        """Starts a new sequence; returns the last position's logits [vocab]."""
        layout = self.layout
        empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), self._kv_dtype)  # [1, H, 0, D]
        self._past = [ort.OrtValue.ortvalue_from_numpy(empty) for _ in range(2 * layout.num_layers)]
        self._length = 0
        return self._run(list(prompt_ids))

    def decode(self, token_id: int) -> np.ndarray:
        """Appends one token; returns its logits [vocab]."""
        return self._run([token_id])
