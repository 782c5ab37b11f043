"""Sampling parameters, validated once, and the token chooser they configure.

Greedy versus sampling is decided once per request (`SamplingParams.greedy`), not per step.
Each request owns a seeded numpy Generator, so a seeded request draws the same tokens whatever
else the engine is doing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from appliance.errors import InvalidRequest

MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens", "must be at least 1")
        if not np.isfinite(self.temperature) or not 0.0 <= self.temperature <= MAX_TEMPERATURE:
            raise InvalidRequest("temperature", f"must be between 0 and {MAX_TEMPERATURE}")
        if self.top_k < 0:
            raise InvalidRequest("top_k", "must not be negative")
        if not np.isfinite(self.top_p) or not 0.0 <= self.top_p <= 1.0:
            raise InvalidRequest("top_p", "must be between 0 and 1")
        if not 0 <= self.seed < 2**64:
            raise InvalidRequest("seed", "must fit in 64 bits")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenChooser:
    """Picks the next token from one row of logits according to SamplingParams."""

    def __init__(self, params: SamplingParams):
        self.params = params
        seed = params.seed or secrets.randbits(63)
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def choose(self, logits: np.ndarray) -> int:
        # logits: [vocab] float32
        if self.params.greedy:
            return int(np.argmax(logits))
        return self._sample(logits.astype(np.float64) / self.params.temperature)

    def _sample(self, scaled: np.ndarray) -> int:
        top_k, top_p = self.params.top_k, self.params.top_p
        if 0 < top_k < scaled.shape[0]:
            kth = np.partition(scaled, -top_k)[-top_k]
            scaled = np.where(scaled >= kth, scaled, -np.inf)
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if 0.0 < top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            # Keep tokens until the mass reaches top_p, always at least the most likely one.
            keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(self._rng.choice(probs.shape[0], p=probs))
