"""Runs many decoder sequences over a builder graph, its state resident on the session's device.

One KV buffer per layer and K/V, [rows, kv_heads, context_length, head_dim], plus the token ids
[rows, 1], the attention mask [rows, context_length] and the logits [rows, 1, vocab]: all
allocated by ONNX Runtime where the session computes (device_buffers.py), so under the CUDA
provider nothing is copied to the host and back between steps. Slots are rows: running sequences
occupy rows 0..n-1, and a decode step binds the first n rows by pointer and shape, the KV both as
`past_key_values.L.*` input and as `present.L.*` output, so each step writes its new keys in place.
The mask has ones up to each row's own length (right padding): GroupQueryAttention reads every
row's length from it. Bindings are made once per batch size; per step the host sends the token
ids and one mask entry per row, and reads back the logits.

Some CPU kernels compute rows in tiles (MatMulNBits takes them two at a time on some hosts) and a
lone row, a batch of one or the odd row out, through another kernel that rounds differently. With
`row_quantum` q > 1 every decode step runs a multiple of q rows, the spare ones computed and
thrown away, so each row takes the same path whatever the batch (see batch_invariance.py).

With CUDA graphs (package_session.open_decoder_session) each batch size's decode step is captured
once, under its own `gpu_graph_id`, and replayed: that needs the fixed addresses above. Prefill
shapes vary, so prefill runs uncaptured. Under `cuda_graph = "auto"` a decode step whose capture or
replay fails reopens the session without graphs and runs again (the state stays in the buffers).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np
import onnxruntime as ort

from appliance.engine.device_buffers import CpuDevice, DeviceBuffer, device_for
from appliance.engine.package_session import (has_prefill_graph, open_decoder_session, open_package_session,
                                               open_prefill_session)
from appliance.engine.providers import RuntimeOptions
from appliance.engine.row_mirrors import RowMirrors
from appliance.errors import PackageError
from appliance.model_package import Manifest

log = logging.getLogger(__name__)

SKIP_GRAPH = "-1"  # ORT's gpu_graph_id for a run that is neither captured nor replayed


def _round_up(n: int, quantum: int) -> int:
    return -(-n // quantum) * quantum


def _touch(device: CpuDevice, buffer: DeviceBuffer) -> DeviceBuffer:
    """Writes the whole of a new buffer, so that the host maps its pages now, at load, and the
    daemon's memory shows the budget from the start. Untouched, the first requests paid for them:
    a prompt's first stores into the prefix cache's pool took 2.5 ms instead of 0.6 (page faults)."""
    device.clear(buffer, 0, buffer.size)
    return buffer


def _runs(blocks, block_tokens: int) -> list[tuple[int, int, int]]:
    """(first block, first position, count) of each run of (block, position) pairs where both
    advance by one block."""
    runs: list[list[int]] = []
    for block, position in blocks:
        if runs and runs[-1][0] + runs[-1][2] == block and runs[-1][1] + runs[-1][2] * block_tokens == position:
            runs[-1][2] += 1
        else:
            runs.append([block, position, 1])
    return [tuple(run) for run in runs]


class SharedKVRunner:
    # Row quanta a decode step may be padded to (the tile sizes seen in ORT's CPU kernels).
    row_quanta = (1, 2, 4)

    def __init__(self, package_dir: Path, manifest: Manifest, options: RuntimeOptions, max_batch: int = 1,
                 context_length: int | None = None, device: Optional[CpuDevice] = None):
        layout = manifest.kv_layout
        if layout is None or not layout.shared_buffer:
            raise PackageError(package_dir.name, "SharedKVRunner needs a graph that shares past and present KV buffers")
        self.layout = layout
        self.max_batch = max_batch
        # The operator may cap the context below the model's to bound KV memory.
        self.context_length = min(context_length or manifest.context_length, manifest.context_length)
        # Beside a prefill session the decode session's threads stop spinning when a step returns,
        # or they would take the cores from the prefill chunk that runs next.
        beside_prefill = has_prefill_graph(manifest, options)
        decode_options = replace(options, thread_spinning="within_runs") if beside_prefill else options
        self.session, self.cuda_graph = open_decoder_session(package_dir, manifest, decode_options)
        self._graphs_may_fall_back = self.cuda_graph and options.cuda_graph == "auto"
        self._open_without_graphs = functools.partial(open_package_session, package_dir, manifest, decode_options)
        self.provider = self.session.get_providers()[0]
        self.device = device or device_for(self.session, options.intra_op_threads or os.cpu_count() or 1)
        self.vocab_size = manifest.vocab_size
        self._dtypes = {spec.name: np.dtype(spec.dtype) for spec in (*manifest.io.inputs, *manifest.io.outputs)}
        self._prefill_options = self._run_options(SKIP_GRAPH)
        # The package's prefill graph (another recipe over the same IO and KV layout), or None:
        # prefill then runs on the decode session. Both bind the same device buffers.
        self.prefill_session = open_prefill_session(package_dir, manifest, options)
        # "last": the graph's LM head runs on the last position only, so a chunk's logits are [1, 1, vocab].
        self._last_logits_only = manifest.logits == "last"
        self._prefill_ids: Optional[DeviceBuffer] = None  # [1, longest chunk so far]
        self._prefill_logits: Optional[DeviceBuffer] = None  # [1, longest chunk so far or 1, vocab]
        self._graph_epoch = 0  # captured graphs hold addresses: new buffers need new graph ids
        self.row_quantum = 1
        self._pool: list[DeviceBuffer] = []  # prefix-cache blocks, per layer K and V [H, blocks * B, D]
        self._block_tokens = 0
        self._mirrors = RowMirrors(1)  # which pool blocks rows still hold (row_mirrors.py)
        self.blocks_not_copied = 0  # hit blocks a row already held, so load_blocks skipped them
        self._allocate(max_batch)

    def _run_options(self, graph_id: str) -> Optional[ort.RunOptions]:
        if not self.cuda_graph:
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", graph_id)
        return options

    def _allocate(self, rows: int) -> None:
        layout, device, context = self.layout, self.device, self.context_length
        shape = (rows, layout.num_kv_heads, context, layout.head_dim)
        # Positions past a row's length are never read (GQA takes each row's length from the mask),
        # so only the mask needs clearing; the KV is written once all the same (_touch).
        self._kv = [_touch(device, device.allocate("kv", shape, layout.dtype)) for _ in range(2 * layout.num_layers)]
        self._ids = device.allocate("input_ids", (rows, 1), self._dtypes["input_ids"])
        self._mask = device.allocate("attention_mask", (rows, context), self._dtypes["attention_mask"])
        device.clear(self._mask, 0, self._mask.size)
        self._logits = device.allocate("logits", (rows, 1, self.vocab_size), self._dtypes["logits"])
        self._rows = rows
        self._row_starts = np.arange(rows, dtype=np.int64) * context  # mask offset of each row
        self._cached = np.zeros(rows, np.int64)  # positions each row holds (ones in its mask)
        self._host_logits = np.empty((rows, self.vocab_size), np.float32)  # where non-fp32 logits are widened
        # (first row, rows) -> the decode step's binding and run options
        self._decode_bindings: dict[tuple[int, int], tuple[ort.IOBinding, Optional[ort.RunOptions]]] = {}
        self._graph_epoch += 1
        self._mirrors.clear()  # new rows hold nothing

    def set_row_quantum(self, quantum: int) -> None:
        """Pads every decode step to a multiple of `quantum` rows. Empties every row: call it
        before any sequence is held."""
        if quantum not in self.row_quanta:
            raise ValueError(f"row quantum {quantum} is not one of {self.row_quanta}")
        self.row_quantum = quantum
        rows = _round_up(self.max_batch, quantum)
        if rows > self._rows:  # the buffers only grow: a KV cache may be gigabytes
            self._kv = []  # freed before the larger ones are allocated
            self._allocate(rows)
        self.device.clear(self._mask, 0, self._mask.size)
        self._cached[:] = 0

    def _bind_kv(self, binding: ort.IOBinding, first_row: int, rows: int) -> None:
        layout, bind = self.layout, self.device.bind
        shape = (rows, layout.num_kv_heads, self.context_length, layout.head_dim)
        for layer in range(layout.num_layers):
            for index, (past, present) in enumerate(((layout.past_key, layout.present_key),
                                                     (layout.past_value, layout.present_value))):
                buffer = self._kv[2 * layer + index]
                bind(binding, past % layer, buffer, first_row, shape)
                bind(binding, present % layer, buffer, first_row, shape, output=True)

    def _decode_binding(self, n: int, first_row: int) -> tuple[ort.IOBinding, Optional[ort.RunOptions]]:
        """KV rows and mask rows first_row.. (the ids and logits always fill their buffers' first n)."""
        found = self._decode_bindings.get((first_row, n))
        if found is None:
            binding, bind = self.session.io_binding(), self.device.bind
            bind(binding, "input_ids", self._ids, 0, (n, 1))
            bind(binding, "attention_mask", self._mask, first_row, (n, self.context_length))
            bind(binding, "logits", self._logits, 0, (n, 1, self.vocab_size), output=True)
            self._bind_kv(binding, first_row, n)
            graph_id = (self._graph_epoch * 1000 + first_row) * 1000 + n
            found = self._decode_bindings[first_row, n] = binding, self._run_options(str(graph_id))
        return found

    def _run(self, binding: ort.IOBinding, options: Optional[ort.RunOptions],
             session: Optional[ort.InferenceSession] = None) -> None:
        self.device.before_run()
        (session or self.session).run_with_iobinding(binding, options)

    def _run_decode(self, rows: int, first_row: int) -> None:
        try:
            self._run(*self._decode_binding(rows, first_row))
        except Exception as exc:
            if not self._graphs_may_fall_back:
                raise
            log.warning("decode steps run without CUDA graphs from now on: a captured step failed (%s)",
                        type(exc).__name__)
            self.session, self.cuda_graph, self._graphs_may_fall_back = self._open_without_graphs(), False, False
            self._decode_bindings = {}
            self._prefill_options = None
            self._run(*self._decode_binding(rows, first_row))

    def _widened(self, logits: np.ndarray, rows: int) -> np.ndarray:
        """[rows, vocab] float32 on the host (an fp16 graph's logits are widened for the sampler)."""
        logits = logits.reshape(rows, self.vocab_size)
        if logits.dtype == np.float32:
            return logits
        np.copyto(self._host_logits[:rows], logits)
        return self._host_logits[:rows]

    def _prefill_buffers(self, length: int) -> tuple[DeviceBuffer, DeviceBuffer]:
        """Chunk-sized ids and logits buffers, regrown only when a longer chunk comes."""
        if self._prefill_ids is None or self._prefill_ids.row_size < length:
            self._prefill_ids = self._prefill_logits = None  # freed before the larger ones
            self._prefill_ids = self.device.allocate("input_ids", (1, length), self._dtypes["input_ids"])
            positions = 1 if self._last_logits_only else length
            self._prefill_logits = self.device.allocate("logits", (1, positions, self.vocab_size),
                                                        self._dtypes["logits"])
        return self._prefill_ids, self._prefill_logits

    def prefill(self, slot: int, token_ids: list[int], start: int) -> np.ndarray:
        """Writes token_ids at positions start.. of row `slot`; returns the last position's logits [vocab],
        read off the device alone (into a reused buffer the graph writes [1, S, vocab], or [1, 1, vocab]
        where its LM head runs on the last position only). Runs on the prefill graph where there is one."""
        device, size, end = self.device, len(token_ids), start + len(token_ids)
        ids, logits = self._prefill_buffers(size)
        device.write(ids, 0, np.asarray(token_ids, ids.dtype))  # [S]
        row = int(self._row_starts[slot])
        device.write(self._mask, row + start, np.ones(size, self._mask.dtype))
        if self._cached[slot] > end:  # a row that held more (a rewritten chunk) keeps no stale ones
            device.clear(self._mask, row + end, int(self._cached[slot]) - end)
        self._mirrors.forget_positions(slot, start, end)
        self._mirrors.mark_used(slot)
        session = self.prefill_session or self.session
        binding = session.io_binding()
        device.bind(binding, "input_ids", ids, 0, (1, size))
        # [1, start + S], the row's own mask: GQA tells a first prompt by mask length == S.
        device.bind(binding, "attention_mask", self._mask, slot, (1, end))
        positions = 1 if self._last_logits_only else size
        device.bind(binding, "logits", logits, 0, (1, positions, self.vocab_size), output=True)
        self._bind_kv(binding, slot, 1)
        # The prefill graph's session never captures CUDA graphs, so it takes no graph id.
        self._run(binding, self._prefill_options if session is self.session else None, session)
        self._cached[slot] = end
        # A copy: a step may prefill several rows before it samples any.
        return np.array(device.read(logits, (positions - 1) * self.vocab_size, self.vocab_size), np.float32)

    def decode(self, token_ids: np.ndarray, lengths: np.ndarray, first_row: int = 0) -> np.ndarray:
        """One token for each of rows first_row..first_row+n-1; lengths[i] tokens are already cached
        in row first_row + i (first_row > 0: a lone request in the row idle_row gave it).

        Returns logits [n, vocab], a view that the next step overwrites.
        """
        n, device = len(token_ids), self.device
        rows = slice(first_row, first_row + n)
        padded = min(_round_up(n, self.row_quantum), self._rows - first_row)
        device.write(self._ids, 0, token_ids)
        device.write_at(self._mask, self._row_starts[rows] + lengths, 1)
        self._mirrors.forget_written(first_row, lengths)
        self._cached[rows] = lengths + 1
        if padded == n:  # the usual step: no spare rows to set up and clear
            self._run_decode(n, first_row)
            return self._widened(device.read(self._logits, 0, n * self.vocab_size), n)
        # A spare row writes one throw-away position just past what it holds: an empty row's
        # position 0, or a prefilling row's next position, which its next chunk overwrites.
        spares = slice(first_row + n, first_row + padded)
        spare = self._row_starts[spares] + self._cached[spares]
        self._mirrors.forget_written(first_row + n, self._cached[spares])
        device.write(self._ids, n, np.zeros(padded - n, self._ids.dtype))
        device.write_at(self._mask, spare, 1)
        self._run_decode(padded, first_row)
        device.write_at(self._mask, spare, 0)
        return self._widened(device.read(self._logits, 0, n * self.vocab_size), n)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copies row src's first `length` cached positions into row dst (slot compaction), on the device."""
        layout, device, mirrors = self.layout, self.device, self._mirrors
        mirrored = mirrors.blocks_of(src)
        mirrors.forget_positions(dst, 0, length)
        pitch = self.context_length * layout.head_dim  # [H, C, D] per row: H runs of length * D, C * D apart
        device.copy_all([(buffer, src * buffer.row_size, pitch, buffer, dst * buffer.row_size, pitch,
                          length * layout.head_dim, layout.num_kv_heads) for buffer in self._kv])
        starts = self._row_starts
        device.copy_block(self._mask, int(starts[src]), int(starts[dst]), length, 1, self.context_length)
        if self._cached[dst] > length:
            device.clear(self._mask, int(starts[dst]) + length, int(self._cached[dst]) - length)
        self._cached[dst] = length
        for position, block in mirrored.items():
            if position + self._block_tokens <= length:
                mirrors.record(dst, block, position)
        mirrors.took_over(dst, src)

    def idle_row(self, pool_slots: tuple[int, ...]) -> int:
        """The row for a request admitted while no other is held (the scheduler keeps it there
        while it runs alone), given the pool slots of its cached prefix (none: a miss).

        The row that holds most of the hit's blocks in place, if it holds more of them than of
        other blocks, which the request overwrites; else an empty row; else the row written least
        recently. A request that shares only the chat template's opening block with the row of a
        whole system prompt so goes elsewhere: given that row for the one block, every unseen
        prefix evicted the seen one, and its next hit copied all 64 blocks again (5 ms of a 60 ms
        first token), as it did once the rows were full if the row holding least was taken.
        Row 0 under CUDA graphs, which would capture a graph per row. Rows whose padded step
        would outrun the buffers are not offered."""
        if self.cuda_graph or not self._pool:
            return 0
        rows, mirrors = range(self._rows - self.row_quantum + 1), self._mirrors
        held = mirrors.rows_holding(pool_slots)
        keeping = [row for row in rows if 2 * held.get(row, 0) > mirrors.blocks_held(row)]
        if keeping:
            return max(keeping, key=lambda row: (held[row], -row))

        def least_wanted(row: int) -> tuple[int, int, int]:
            return (1, mirrors.last_used(row), row) if mirrors.blocks_held(row) else (0, 0, row)

        return min(rows, key=least_wanted)

    def release(self, slot: int) -> None:
        if self._cached[slot]:
            self.device.clear(self._mask, int(self._row_starts[slot]), int(self._cached[slot]))
        self._cached[slot] = 0

    def allocate_prefix_pool(self, block_tokens: int, budget_bytes: int) -> tuple[int, int]:
        """Allocates the prefix cache's pool on the session's device, as many blocks of
        `block_tokens` positions as `budget_bytes` holds; returns (blocks, bytes per block)."""
        layout = self.layout
        block_bytes = 2 * layout.num_layers * layout.num_kv_heads * block_tokens * layout.head_dim \
            * np.dtype(layout.dtype).itemsize
        blocks = budget_bytes // block_bytes
        # Heads outermost, like a KV row's: consecutive blocks of a head are consecutive positions,
        # so a run of them copies to or from a row in one 2-D copy per layer.
        shape = (layout.num_kv_heads, blocks * block_tokens, layout.head_dim)
        self._pool = [_touch(self.device, self.device.allocate("prefix_cache", shape, layout.dtype))
                      for _ in range(2 * layout.num_layers)] if blocks else []
        self._block_tokens = block_tokens
        self._mirrors = RowMirrors(block_tokens)
        return blocks, block_bytes

    def _block_copies(self, slot: int, blocks, to_row: bool) -> None:
        """(pool block, first position) pairs copied on the device, into row `slot` or out of it:
        each run of consecutive blocks at consecutive positions is H runs of n * B * D elements,
        (blocks * B) * D apart in the pool and C * D apart in the row."""
        layout, size, copies = self.layout, self._block_tokens, []
        row_pitch, heads = self.context_length * layout.head_dim, layout.num_kv_heads
        pool_pitch = self._pool[0].shape[1] * layout.head_dim  # every layer's pool has one shape
        for first, position, count in _runs(blocks, size):
            width, at_pool = count * size * layout.head_dim, first * size * layout.head_dim
            for pool, kv in zip(self._pool, self._kv):
                at_row = slot * kv.row_size + position * layout.head_dim
                if to_row:
                    copies.append((pool, at_pool, pool_pitch, kv, at_row, row_pitch, width, heads))
                else:
                    copies.append((kv, at_row, row_pitch, pool, at_pool, pool_pitch, width, heads))
        self.device.copy_all(copies)

    def load_blocks(self, slot: int, blocks, length: int) -> None:
        """Copies pool blocks into row `slot`, block i at positions [i * B, (i + 1) * B), and marks
        the first `length` positions held (the row must be empty: a newly admitted request's). The
        positions of a last, partly matched block past `length` are the prefill's to rewrite.
        Blocks the row still holds from its last request are not copied again (row_mirrors.py)."""
        size, mirrors = self._block_tokens, self._mirrors
        wanted = [(block, i * size) for i, block in enumerate(blocks)]
        missing = [(block, position) for block, position in wanted if not mirrors.holds(slot, block, position)]
        self.blocks_not_copied += len(wanted) - len(missing)
        for _, position in missing:
            mirrors.forget_positions(slot, position, position + size)
        self._block_copies(slot, missing, True)
        for block, position in missing:
            mirrors.record(slot, block, position)
        mirrors.mark_used(slot)
        self.device.write(self._mask, int(self._row_starts[slot]), np.ones(length, self._mask.dtype))
        self._cached[slot] = length

    def store_blocks(self, slot: int, blocks) -> None:
        """Copies row `slot`'s positions [p, p + B) into pool block b, for each (b, p)."""
        for block, _ in blocks:
            self._mirrors.forget_block(block)
        self._block_copies(slot, blocks, False)
        for block, position in blocks:
            self._mirrors.record(slot, block, position)
