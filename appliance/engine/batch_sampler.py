"""The sampler over a whole step's batch at once.

One pass over the step's logits [n, vocab] does what the rows share: the penalties, gathered from
each request's count arrays; the blocked tokens; one argmax that gives every greedy row its token,
whatever the other rows need; the log-softmax of the rows that asked for logprobs. Then each
sampling row draws from its candidate set (top-k by partition, top-p on a partitioned head of the
sorted order) with its own generator, so a seeded request draws the same tokens alone and batched.

It reproduces the per-row sampler it replaced bit for bit: the same float32 penalties, the same
float64 probabilities and the same `Generator.choice` call on them. A draw over the candidates in
token order is the draw over the vocabulary with zeros elsewhere (a zero adds nothing to the
cumulative sum that choice searches); the normalising sums run over a vocabulary-long row that is
zero outside the candidates, because numpy's pairwise sum rounds by position.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from appliance.engine.sampling import Choice, RequestSampler, SamplingParams, TokenCounts

# Candidates a top-p row sorts first; a nucleus wider than that sorts at least NUCLEUS_GROWTH times more.
NUCLEUS_HEAD = 256
NUCLEUS_GROWTH = 8


class BatchSampler:
    def __init__(self):
        self._zeros = np.zeros(0)  # [vocab] float64, all zero between uses (see _padded_sum)

    def sample(self, logits: np.ndarray, samplers: Sequence[RequestSampler],
               blocked: Sequence[tuple[int, ...]]) -> list[Choice]:
        """logits: [n, vocab], row i for samplers[i], never written (it may be the runner's buffer);
        blocked[i]: the ids row i may not pick now. Counts each penalised row's token."""
        scores = np.asarray(logits, np.float32)
        tokens = scores.argmax(axis=-1)  # [n]: the greedy rows' tokens where nothing below moves them
        if all(s.plain_greedy for s in samplers) and not any(blocked):
            return [Choice(token) for token in tokens.tolist()]
        if self._zeros.shape[0] != scores.shape[1]:
            self._zeros = np.zeros(scores.shape[1])
        rows = list(scores)  # [vocab] each
        changed, adjusted = _adjusted(scores, samplers, blocked)
        if changed:
            tokens[changed] = adjusted.argmax(axis=-1)
            for i, row in zip(changed, adjusted):
                rows[i] = row
        for i, (sampler, row) in enumerate(zip(samplers, rows)):
            if not sampler.params.greedy:
                tokens[i] = self._draw(row, sampler)
        tokens = tokens.tolist()
        for sampler, token in zip(samplers, tokens):
            if sampler.params.penalised:
                sampler.counts.add(token)
        return _choices(scores, samplers, tokens)

    def _draw(self, row: np.ndarray, sampler: RequestSampler) -> int:
        """row: [vocab] float32 scores; temperature, top-k, min-p and top-p, then the row's generator."""
        params = sampler.params
        ids: Optional[np.ndarray] = None  # the candidates, ascending; None: the whole vocabulary
        if 0 < params.top_k < row.shape[0]:
            # Dividing by a positive temperature in float64 keeps float32 scores strictly in order,
            # so the k-th largest score marks the same candidates (ties too) as the scaled scores.
            kth = np.partition(row, -params.top_k)[-params.top_k]
            ids = np.flatnonzero(row >= kth)
            row = row[ids]
        scaled = np.divide(row, params.temperature, dtype=np.float64)
        scaled -= scaled.max()
        probs = np.exp(scaled, out=scaled)
        probs /= self._padded_sum(probs, ids)
        if params.min_p > 0.0:
            ids, probs = self._kept(np.flatnonzero(probs >= params.min_p * probs.max()), ids, probs)
        if 0.0 < params.top_p < 1.0:
            ids, probs = self._kept(_nucleus(probs, params.top_p), ids, probs)
        pick = int(sampler.rng.choice(probs.shape[0], p=probs))
        return pick if ids is None else int(ids[pick])

    def _kept(self, positions: np.ndarray, ids: Optional[np.ndarray], probs: np.ndarray):
        """The candidates at `positions` (ascending), renormalised."""
        ids = positions if ids is None else ids[positions]
        probs = probs[positions]
        return ids, probs / self._padded_sum(probs, ids)

    def _padded_sum(self, values: np.ndarray, ids: Optional[np.ndarray]) -> float:
        """values.sum() as if over the vocabulary with zeros outside ids."""
        if ids is None:
            return values.sum()
        self._zeros[ids] = values
        total = self._zeros.sum()
        self._zeros[ids] = 0.0
        return total


def _adjusted(scores: np.ndarray, samplers: Sequence[RequestSampler],
              blocked: Sequence[tuple[int, ...]]) -> tuple[list[int], Optional[np.ndarray]]:
    """The rows that penalties or blocked tokens change, and those rows changed: [len, vocab]
    float32, a copy (the other rows are read where they are)."""
    penalised = [i for i, s in enumerate(samplers) if s.params.penalised and s.counts.size]
    blocking = [i for i, ids in enumerate(blocked) if ids]
    changed = sorted({*penalised, *blocking})
    if not changed:
        return changed, None
    adjusted = scores[changed]
    local = {row: j for j, row in enumerate(changed)}
    if penalised:
        _penalise(adjusted, [local[i] for i in penalised], [samplers[i].params for i in penalised],
                  [samplers[i].counts for i in penalised])
    if blocking:
        rows = np.repeat([local[i] for i in blocking], [len(blocked[i]) for i in blocking])
        cols = np.fromiter(itertools.chain.from_iterable(blocked[i] for i in blocking), np.int64)
        adjusted[rows, cols] = -np.inf
    return changed, adjusted


def _penalise(scores: np.ndarray, rows: list[int], params: list[SamplingParams], counts: list[TokenCounts]) -> None:
    """The repetition penalty (CTRL), then presence and frequency, on every row's seen tokens at
    once: [m] flat (row, token) pairs, float32 as the per-row sampler computed them."""
    sizes = [c.size for c in counts]

    def per_token(name: str) -> np.ndarray:
        return np.repeat(np.array([getattr(p, name) for p in params], np.float32), sizes)

    at = np.repeat(rows, sizes), np.concatenate([c.ids[:c.size] for c in counts])
    occurrences = np.concatenate([c.counts[:c.size] for c in counts])
    repetition = per_token("repetition_penalty")
    seen = scores[at]
    seen = np.where(seen > 0, seen / repetition, seen * repetition)
    scores[at] = seen - per_token("presence_penalty") - per_token("frequency_penalty") * occurrences


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (ascending) of the most likely tokens until their mass reaches top_p, always at
    least the most likely one: a prefix of the stable descending sort, sorting only its head."""
    size, head = probs.shape[0], NUCLEUS_HEAD
    while True:
        if head >= size:
            order = np.argsort(-probs, kind="stable")
        else:
            # Every token at least as likely as the head-th most likely (ties too) is the start of
            # the full stable order, so sorting just them gives the same prefix.
            floor = np.partition(probs, size - head)[size - head]
            start = np.flatnonzero(probs >= floor)
            order = start[np.argsort(-probs[start], kind="stable")]
        cumulative = np.cumsum(probs[order])
        cut = int(np.searchsorted(cumulative, top_p))
        if cut < order.shape[0] or order.shape[0] == size:
            return np.sort(order[: cut + 1])
        # No token outside the head is likelier than its last, so the nucleus needs at least
        # (top_p - head's mass) / that probability more; past half the vocabulary, sort it all.
        needed = order.shape[0] + int((top_p - cumulative[-1]) / probs[order[-1]]) + 1
        head = max(head * NUCLEUS_GROWTH, needed)
        head = size if 2 * head >= size else head


def _choices(logits: np.ndarray, samplers: Sequence[RequestSampler], tokens: list[int]) -> list[Choice]:
    """Each row's Choice, with the chosen token's log-probability and the top alternatives under the
    model's distribution (before penalties) for the rows that asked."""
    choices = [Choice(token) for token in tokens]
    wanted = [i for i, s in enumerate(samplers) if s.params.logprobs is not None]
    if not wanted:
        return choices
    shifted = logits[wanted].astype(np.float64)  # [m, vocab]
    shifted -= shifted.max(axis=-1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    for row, i in zip(logprobs, wanted):
        top_n, token = samplers[i].params.logprobs, tokens[i]
        top = ()
        if top_n:
            best = np.argpartition(-row, top_n)[:top_n]
            best = best[np.argsort(-row[best], kind="stable")]
            top = tuple((int(t), float(row[t])) for t in best)
        choices[i] = Choice(token, float(row[token]), top)
    return choices
