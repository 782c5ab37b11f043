"""The per-row sampler the batch pass replaced (TokenChooser as of commit 7e6bb13), kept as the
straightforward reference that tests and benchmarks/engine/bench_sampler.py compare it with."""

import secrets
from dataclasses import dataclass, field

import numpy as np

from appliance.engine.sampling import Choice, SamplingParams


@dataclass
class TokenChooser:
    """Picks the next token for one request; keeps what the penalties need."""

    params: SamplingParams
    _counts: dict[int, int] = field(default_factory=dict)
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        seed = self.params.seed or secrets.randbits(63)
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def choose(self, logits: np.ndarray, blocked: tuple[int, ...] = ()) -> Choice:
        """logits: [vocab] float32 for this request's next position; blocked: ids it may not pick yet."""
        params = self.params
        scores = logits.astype(np.float32, copy=True)
        if params.penalised and self._counts:
            self._penalise(scores)
        if blocked:
            scores[list(blocked)] = -np.inf
        if params.greedy:
            token = int(np.argmax(scores))
        else:
            token = self._sample(scores.astype(np.float64) / params.temperature)
        self._counts[token] = self._counts.get(token, 0) + 1
        if params.logprobs is None:
            return Choice(token)
        return self._with_logprobs(logits, token)

    def _penalise(self, scores: np.ndarray) -> None:
        params = self.params
        ids = np.fromiter(self._counts.keys(), np.int64, len(self._counts))
        counts = np.fromiter(self._counts.values(), np.float32, len(self._counts))
        seen = scores[ids]
        if params.repetition_penalty != 1.0:
            seen = np.where(seen > 0, seen / params.repetition_penalty, seen * params.repetition_penalty)
        seen = seen - params.presence_penalty - params.frequency_penalty * counts
        scores[ids] = seen

    def _sample(self, scaled: np.ndarray) -> int:
        params = self.params
        if 0 < params.top_k < scaled.shape[0]:
            kth = np.partition(scaled, -params.top_k)[-params.top_k]
            scaled = np.where(scaled >= kth, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if params.min_p > 0.0:
            probs = np.where(probs >= params.min_p * probs.max(), probs, 0.0)
            probs /= probs.sum()
        if 0.0 < params.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep tokens until the mass reaches top_p, always at least the most likely one.
            keep = order[: int(np.searchsorted(cumulative, params.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self._rng.choice(probs.shape[0], p=probs))

    def _with_logprobs(self, logits: np.ndarray, token: int) -> Choice:
        shifted = logits.astype(np.float64) - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        top = ()
        if self.params.logprobs:
            best = np.argpartition(-logprobs, self.params.logprobs)[: self.params.logprobs]
            best = best[np.argsort(-logprobs[best], kind="stable")]
            top = tuple((int(i), float(logprobs[i])) for i in best)
        return Choice(token, float(logprobs[token]), top)
