"""Sampling parameters, validated once, and the per-request state they configure.

Where tokens are sampled: `BatchSampler.sample` (batch_sampler.py), for a whole step at once.
Greedy versus sampling is decided once per request (`SamplingParams.greedy`), not per step. Each
request owns a seeded numpy Generator, so a seeded request draws the same tokens whether it runs
alone or batched with others.
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


class TokenCounts:
    """How often each generated token occurred, kept as arrays the batch pass gathers as they are:
    ids[:size] are the distinct tokens (first seen first), counts[:size] their occurrences."""

    def __init__(self):
        self.ids = np.empty(16, np.int64)
        self.counts = np.zeros(16, np.float32)
        self.size = 0
        self._slot: dict[int, int] = {}

    def add(self, token: int) -> None:
        slot = self._slot.get(token)
        if slot is None:
            if self.size == len(self.ids):  # doubling keeps the per-token cost constant
                self.ids = np.concatenate([self.ids, np.empty_like(self.ids)])
                self.counts = np.concatenate([self.counts, np.zeros_like(self.counts)])
            slot = self._slot[token] = self.size
            self.ids[slot] = token
            self.size += 1
        self.counts[slot] += 1


@dataclass
class RequestSampler:
    """One request's sampling state: its seeded generator and the counts its penalties read.
    batch_sampler.py draws for every request of a step at once."""

    params: SamplingParams
    counts: TokenCounts = field(default_factory=TokenCounts)
    rng: np.random.Generator = field(init=False)
    plain_greedy: bool = field(init=False)  # a bare argmax: no penalties, no logprobs

    def __post_init__(self):
        seed = self.params.seed or secrets.randbits(63)
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.plain_greedy = self.params.greedy and not self.params.penalised and self.params.logprobs is None
