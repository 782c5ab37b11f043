"""Runs decoder sequences over a graph whose KV cache grows by concatenation (Optimum exports).

Such graphs take `past_key_values.L.*` of length P and return `present.L.*` of length P + S, so
the cache cannot be preallocated and shared, and rows of different lengths cannot share a call
without padding the graph does not expect. Each slot keeps its own presents as OrtValues that ORT
allocates on the session's device (bound as the next step's pasts, never copied to the host) and
decodes in its own call; only the logits come back to the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from appliance.engine.device_buffers import session_device
from appliance.engine.package_session import open_package_session
from appliance.engine.providers import RuntimeOptions
from appliance.model_package import Manifest

class ConcatKVRunner:
    # Every row decodes in a call of its own, so no row's result depends on the others'.
    row_quanta = (1,)
    row_quantum = 1

    def __init__(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions, max_batch: int = 1,
                 context_length: int | None = None):
        self.layout = manifest.kv_layout
        self.max_batch = max_batch
        self.context_length = min(context_length or manifest.context_length, manifest.context_length)
        self.session = open_package_session(package_dir, manifest, options)
        self.provider = self.session.get_providers()[0]
        self._device = session_device(self.session)  # where the presents stay
        self._takes_positions = "position_ids" in {i.name for i in self.session.get_inputs()}
        self._kv_dtype = np.dtype(self.layout.dtype)
        self._past: dict[int, list[ort.OrtValue]] = {}
        self.vocab_size = manifest.vocab_size
        self._logits = np.zeros((max_batch, manifest.vocab_size), np.float32)

    def set_row_quantum(self, quantum: int) -> None:
        if quantum != 1:
            raise ValueError("a concatenating-KV runner decodes each row alone; its row quantum is 1")

    def _kv_names(self):
        layout = self.layout
        for layer in range(layout.num_layers):
            yield layout.past_key % layer, layout.present_key % layer
            yield layout.past_value % layer, layout.present_value % layer

    def _run(self, slot: int, ids: list[int], start: int) -> np.ndarray:
        total = start + len(ids)
        feeds = {"input_ids": np.asarray([ids], np.int64),  # [1, S]
                 "attention_mask": np.ones((1, total), np.int64)}  # [1, P + S]
        if self._takes_positions:
            feeds["position_ids"] = np.arange(start, total, dtype=np.int64)[None, :]  # [1, S]
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output("logits", "cpu")
        for index, (past_name, present_name) in enumerate(self._kv_names()):
            binding.bind_ortvalue_input(past_name, self._past[slot][index])
            binding.bind_output(present_name, *self._device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self._past[slot] = list(outputs[1:])  # presents, in bind order, become the next pasts
        return outputs[0].numpy()[0, -1]  # [vocab]

    def prefill(self, slot: int, token_ids: list[int], start: int) -> np.ndarray:
        if start == 0:
            layout = self.layout
            empty = np.zeros((1, layout.num_kv_heads, 0, layout.head_dim), self._kv_dtype)  # [1, H, 0, D]
            self._past[slot] = [ort.OrtValue.ortvalue_from_numpy(empty, *self._device)
                                for _ in range(2 * layout.num_layers)]
        return self._run(slot, list(token_ids), start)

    def decode(self, token_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        n = len(token_ids)
        for row in range(n):
            self._logits[row] = self._run(row, [int(token_ids[row])], int(lengths[row]))
        return self._logits[:n]

    def move(self, src: int, dst: int, length: int) -> None:
        self._past[dst] = self._past.pop(src)

    def release(self, slot: int) -> None:
        self._past.pop(slot, None)
