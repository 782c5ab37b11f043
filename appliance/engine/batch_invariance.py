"""Whether one sequence's logits depend on what else is in its decode batch, on this host.

ONNX Runtime's CPU kernels choose a code path by the number of rows. MatMulNBits, for one, takes
rows in tiles of two on some hosts and a lone row (a batch of one, or the odd row out) through
another kernel; the sums round differently, and with int8 activations a last-bit difference can
move a value across a quantization step, so the tokens of a request part ways with its solo run
(seen here: block 128 int4 logits 0.55 apart). Padding each decode step to a multiple of the
tile sends every row down one path. Which quantum that takes depends on the host's instruction
set, the package's recipe and the ORT build, so it is measured, not assumed: `probe` fills rows
with prompts of mixed lengths, decodes them at several batch sizes and positions, and compares
every row's logits bit for bit with the same sequence decoded alone.

The same goes for where a prompt is cut into chunks: `probe_hit_quantum` measures where a
prefix-cache hit may end, and its rest run as one chunk, and still give the cold prompt's logits.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from appliance.engine.engine import Runner

Policy = Literal["auto", "always", "off"]
# The largest step-time increase at one row that "auto" pays for invariance.
AUTO_MAX_COST = 0.05
PROMPT_LENGTHS = (7, 3, 12, 5, 9, 4, 10, 6)
STEPS = 3
COST_REPEATS = 5
COST_STEPS = 4


@dataclass(frozen=True)
class InvarianceReport:
    holds: bool
    row_quantum: int  # decode steps run a multiple of this many rows
    # Step time at one row with the padding, over without it, minus one (0 where none is needed).
    padding_cost: float
    batch_sizes: tuple[int, ...]
    prompt_lengths: tuple[int, ...]
    note: str

    def as_record(self) -> dict:
        return {"holds": self.holds, "row_quantum": self.row_quantum, "padding_cost": round(self.padding_cost, 4),
                "batch_sizes": list(self.batch_sizes), "prompt_lengths": list(self.prompt_lengths),
                "decode_steps": STEPS, "note": self.note}


def _batch_sizes(max_batch: int) -> tuple[int, ...]:
    # Even and odd sizes, and the fullest batch: the tile remainders differ between them.
    return tuple(sorted({m for m in (2, 3, 4, 5, max_batch) if 2 <= m <= max_batch}))


def _decode(runner: Runner, prompts: list[list[int]], tokens: np.ndarray) -> list[np.ndarray]:
    """Prefills prompts[i] into row i, then decodes STEPS fixed tokens; logits [STEPS + 1, vocab] per row."""
    logits = [[runner.prefill(row, p, 0).copy()] for row, p in enumerate(prompts)]
    lengths = np.asarray([len(p) for p in prompts], np.int64)
    for step in range(STEPS):
        out = runner.decode(tokens[: len(prompts), step], lengths)
        for row in range(len(prompts)):
            logits[row].append(out[row].copy())
        lengths = lengths + 1
    for row in range(len(prompts)):
        runner.release(row)
    return [np.stack(rows) for rows in logits]


def _holds(runner: Runner, prompts: list[list[int]], tokens: np.ndarray, sizes: tuple[int, ...]) -> bool:
    alone = [_decode(runner, [p], tokens[i : i + 1])[0] for i, p in enumerate(prompts)]
    for size in sizes:
        # Rotating the prompts puts each sequence at another row for each batch size.
        order = [(size + k) % len(prompts) for k in range(size)]
        batched = _decode(runner, [prompts[i] for i in order], tokens[order])
        if any(not np.array_equal(batched[row], alone[i]) for row, i in enumerate(order)):
            return False
    return True


def _step_cost(runner: Runner, quantum: int, prompt: list[int]) -> float:
    """Median ratio of one-row decode step time with rows padded to `quantum` over without,
    the two timed in turns so that the machine's noise falls on both."""
    ratios = []
    for _ in range(COST_REPEATS + 1):  # the first round only warms both shapes up
        times = []
        for q in (1, quantum):
            runner.row_quantum = q  # the buffers have room for the padded rows
            runner.prefill(0, prompt, 0)
            begin = time.perf_counter()
            for step in range(COST_STEPS):
                runner.decode(np.asarray([1]), np.asarray([len(prompt) + step]))
            times.append(time.perf_counter() - begin)
            runner.release(0)
        ratios.append(times[1] / times[0])
    return float(np.median(ratios[1:])) - 1.0


def probe(runner: Runner, policy: Policy = "auto", seed: int = 0) -> InvarianceReport:
    """Measures and applies the smallest row quantum that makes decoding batch-invariant.

    "auto" applies it only when padding costs at most AUTO_MAX_COST at one row; "always" applies
    it whatever it costs; "off" applies none and still reports whether invariance holds. The
    runner must hold no sequence (its rows are emptied). Leaves the runner's rows empty.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, min(runner.max_batch, len(PROMPT_LENGTHS)))
    room = max(1, runner.context_length - max(STEPS, COST_STEPS) - 1)
    lengths = tuple(min(n, room) for n in PROMPT_LENGTHS[:rows])
    prompts = [[int(t) for t in rng.integers(0, runner.vocab_size, n)] for n in lengths]
    tokens = rng.integers(0, runner.vocab_size, (rows, STEPS)).astype(np.int64)
    sizes = _batch_sizes(runner.max_batch)

    def report(holds: bool, quantum: int, cost: float, note: str) -> InvarianceReport:
        return InvarianceReport(holds, quantum, cost, sizes, lengths, note)

    if not sizes:
        return report(True, 1, 0.0, "holds: max_batch 1, every request runs alone")
    runner.set_row_quantum(1)
    if _holds(runner, prompts, tokens, sizes):
        return report(True, 1, 0.0, "holds without padding")
    if policy == "off":
        return report(False, 1, 0.0, "does not hold: padding is off by config")
    for quantum in runner.row_quanta[1:]:
        runner.set_row_quantum(quantum)
        if not _holds(runner, prompts, tokens, sizes):
            continue
        cost = _step_cost(runner, quantum, prompts[0])
        if policy == "auto" and cost > AUTO_MAX_COST:
            runner.set_row_quantum(1)
            return report(False, 1, cost, f"does not hold: padding decode steps to {quantum} rows would make it hold "
                                          f"at +{cost:.0%} step time at one row, over the {AUTO_MAX_COST:.0%} "
                                          f"that auto allows")
        runner.row_quantum = quantum
        return report(True, quantum, cost, f"holds with decode steps padded to a multiple of {quantum} rows")
    runner.set_row_quantum(1)
    return report(False, 1, 0.0, f"does not hold, even with decode steps padded to any of {runner.row_quanta} rows")


def _last_logits(runner: Runner, prompt: list[int], pieces: list[tuple[int, int]]) -> np.ndarray:
    """Prefills row 0 piece by piece ([start, end) each, a later piece rewriting positions an
    earlier one wrote) and returns the last piece's logits; leaves row 0 empty."""
    for start, end in pieces:
        logits = runner.prefill(0, prompt[start:end], start)  # a runner's prefill returns a copy
    runner.release(0)
    return logits


def _rest_pieces(start: int, end: int, chunk: int) -> list[tuple[int, int]]:
    """How the scheduler cuts [start, end): in one piece where it fits in a chunk (from a hit's
    end, with hit_quantum), else at multiples of `chunk` (a cold prompt's cuts, from 0)."""
    if end - start <= chunk:
        return [(start, end)]
    cuts = [start] + list(range((start // chunk + 1) * chunk, end, chunk)) + [end]
    return list(zip(cuts[:-1], cuts[1:]))


def probe_hit_quantum(runner: Runner, chunk: int, block: int, seed: int = 0) -> tuple[int, str]:
    """The scheduler's hit_quantum for this runner, and a note: the finest q (1, 2, 4, ... up to
    `block`) at which a prefix-cache hit may end and its rest, cut as the scheduler cuts it, still
    give the logits of the cold prompt's chunks bit for bit; 0 where not even whole-block hits do.

    The hit's KV is what the cold prefill wrote at multiples of `chunk`. For each q the rest starts
    at q past a block boundary (at the boundary for q = block): across a multiple of `chunk`, inside
    one chunk, and longer than a chunk, over prompts of odd and even length (a lone last row takes
    another kernel path on some hosts). The runner must hold no sequence.
    """
    rng = np.random.default_rng(seed)
    # Per prompt length, a prompt and its cold logits: the same for every q.
    cold_runs: dict[int, tuple[list[int], np.ndarray]] = {}
    quanta = [q for q in (1, 2, 4, 8, 16, 32, 64) if q < block and block % q == 0] + [block]
    for quantum in quanta:
        past = quantum % block
        cases = [(chunk - block + past, chunk + 5), (block + past, min(chunk, 3 * block + 6)),
                 (chunk - block + past, 2 * chunk + 3)]  # (hit end, prompt length)
        cases = [(hit, n) for hit, n in cases if 0 < hit and hit + 2 <= n <= runner.context_length]
        if not cases:
            return 0, "not measured: the context is too short for the probe"
        for hit, n in cases:
            cold = _rest_pieces(0, n, chunk)
            if n not in cold_runs:
                prompt = [int(t) for t in rng.integers(0, runner.vocab_size, n)]
                cold_runs[n] = prompt, _last_logits(runner, prompt, cold)
            prompt, cold_logits = cold_runs[n]
            # The hit's KV as the cold prefill wrote it, then the rest again over it.
            cached = [piece for piece in cold if piece[0] < hit] + _rest_pieces(hit, n, chunk)
            if not np.array_equal(cold_logits, _last_logits(runner, prompt, cached)):
                break
        else:
            where = "anywhere" if quantum == 1 else f"at multiples of {quantum} tokens"
            return quantum, f"a hit may end {where}, and its rest runs as one chunk where it fits"
    return 0, "a hit's rest prefills in the cold prompt's chunks: one chunk from its end changed the logits"


_ISA_FLAGS = ("amx_int8", "avx512_vnni", "avx512f", "avx_vnni", "avx2", "neon", "asimddp")


def host_record(provider: str) -> dict:
    """What the kernels' choice of path depends on: the instruction sets, the ORT build, the provider."""
    import platform

    import onnxruntime

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"machine": platform.machine(), "isa": [f for f in _ISA_FLAGS if f in flags],
            "onnxruntime": onnxruntime.__version__, "provider": provider}
