"""Per-request records to the figures the report prints, and the capacity search. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

TTFT_LIMIT_S = 5.0


@dataclass
class RequestRecord:
    conversation: int
    turn: int
    sent_s: float                     # offsets from the start of the run
    first_token_s: Optional[float] = None
    done_s: Optional[float] = None
    tokens: int = 0
    gaps_s: list[float] = field(default_factory=list)   # per token after the first
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.first_token_s is not None and self.done_s is not None

    def token_arrived(self, now_s: float, count: int) -> None:
        """`count` tokens arrived together at `now_s`: a later chunk of k tokens counts k equal gaps;
        the first chunk sets the time to first token."""
        if count <= 0:
            return
        if self.first_token_s is None:
            self.first_token_s = now_s
        else:
            self.gaps_s += [(now_s - self.done_s) / count] * count
        self.tokens += count
        self.done_s = now_s


def percentile_ms(values, q: float) -> float:
    return float(np.percentile(values, q)) * 1e3 if len(values) else float("nan")


def summarize(records: list[RequestRecord], hit_rate: Optional[float] = None) -> dict:
    ok = [r for r in records if r.ok]
    ttfts = [r.first_token_s - r.sent_s for r in ok]
    gaps = [g for r in ok for g in r.gaps_s]
    span = (max(r.done_s for r in ok) - min(r.sent_s for r in records)) if ok else 0.0
    return {"completed": len(ok), "failed": len(records) - len(ok),
            "ttft_p50_ms": percentile_ms(ttfts, 50), "ttft_p99_ms": percentile_ms(ttfts, 99),
            "itl_p50_ms": percentile_ms(gaps, 50), "itl_p99_ms": percentile_ms(gaps, 99),
            "tokens_per_s": sum(r.tokens for r in ok) / span if span > 0 else 0.0,
            "prefix_hit_rate": hit_rate,
            "errors": sorted({r.error for r in records if r.error})[:3]}


def sustained(summary: dict, limit_s: float = TTFT_LIMIT_S) -> bool:
    """A rate is sustained when every request completed and TTFT p99 stayed under the limit."""
    return summary["failed"] == 0 and summary["completed"] > 0 and summary["ttft_p99_ms"] < limit_s * 1e3


def find_capacity(measure: Callable[[float], dict], start: float, steps: int,
                  floor: float = 0.0) -> tuple[Optional[float], list[tuple[float, dict]]]:
    """The highest sustained rate found by doubling from `start` until a rate fails, then bisecting
    between the last good and the first bad rate; `steps` measurements in all. None when even the
    lowest rate tried (halving down to `floor`) fails. Returns (capacity, [(rate, summary), ...])."""
    tried: list[tuple[float, dict]] = []
    good, bad = None, None
    rate = start
    for _ in range(steps):
        summary = measure(rate)
        tried.append((rate, summary))
        if sustained(summary):
            good = rate
        else:
            bad = rate
        if good is not None and bad is not None:
            rate = (good + bad) / 2
        elif good is not None:
            rate = good * 2
        else:
            rate = bad / 2
            if rate < floor:
                break
    return good, tried
