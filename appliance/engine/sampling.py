"""Sampling parameters, validated once, and the token chooser they configure.

Where a token is sampled: `TokenChooser.choose`. Greedy versus sampling is decided once per
request (`SamplingParams.greedy`), not per step. Each request owns a seeded numpy Generator, so
a seeded request draws the same tokens whether it runs alone or batched with others.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from appliance.errors import InvalidRequest

MAX_TEMPERATURE = 100.0
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_TOP_LOGPROBS = 20


def _finite_in(name: str, value: float, low: float, high: float) -> None:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequest(name, f"must be between {low:g} and {high:g}")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    # 1.0 is off; > 1 divides positive logits of tokens already seen (CTRL-style).
    repetition_penalty: float = 1.0
    # Subtracted once from tokens seen at all, and per occurrence, in the generated text.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    min_tokens: int = 0
    ignore_eos: bool = False
    # Return the chosen token's log-probability and this many most likely alternatives (0: none).
    logprobs: Optional[int] = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens", "must be at least 1")
        _finite_in("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        if self.top_k < 0:
            raise InvalidRequest("top_k", "must not be negative")
        _finite_in("top_p", self.top_p, 0.0, 1.0)
        _finite_in("min_p", self.min_p, 0.0, 1.0)
        _finite_in("repetition_penalty", self.repetition_penalty, 0.01, 100.0)
        _finite_in("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _finite_in("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        if not 0 <= self.seed < 2**64:
            raise InvalidRequest("seed", "must fit in 64 bits")
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest("stop", f"holds {len(self.stop)} strings; at most {MAX_STOP_STRINGS}")
        for index, text in enumerate(self.stop):
            if not text or len(text) > MAX_STOP_STRING_CHARS:
                raise InvalidRequest(f"stop[{index}]", f"must hold 1 to {MAX_STOP_STRING_CHARS} characters")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise InvalidRequest("stop_token_ids", f"holds {len(self.stop_token_ids)} ids; at most {MAX_STOP_TOKEN_IDS}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidRequest("min_tokens", "must be between 0 and max_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequest("logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalised(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class Choice:
    token_id: int
    # Log-probability of the chosen token under the model's distribution, and the top
    # alternatives as (token_id, logprob), when the request asked for logprobs.
    logprob: Optional[float] = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass
class TokenChooser:
    """Picks the next token for one request; keeps what the penalties need."""

    params: SamplingParams
    _counts: dict[int, int] = field(default_factory=dict)
    _rng: np.random.Generator = field(init=False)

    def __post_init__(self):
        seed = self.params.seed or secrets.randbits(63)
        self._rng = np.random.Generator(np.random.PCG64(seed))

    @property
    def plain_greedy(self) -> bool:
        """True when the choice is a bare argmax (vectorisable across rows)."""
        return self.params.greedy and not self.params.penalised and self.params.logprobs is None

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
