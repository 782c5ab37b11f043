"""A generation request's state machine and the events it streams."""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

from appliance import finish_reasons
from appliance.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from appliance.engine.output import RequestStream


class RequestStatus(enum.IntEnum):
    WAITING = 0
    PREFILLING = 1
    RUNNING = 2
    # Finished states last: `status >= FINISHED_STOPPED` means done.
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_CANCELLED = 5
    FINISHED_DEADLINE = 6
    FINISHED_ERROR = 7

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


# The one map from finished states to their finish reasons (named in appliance.finish_reasons).
FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: finish_reasons.STOP,
    RequestStatus.FINISHED_LENGTH: finish_reasons.LENGTH,
    RequestStatus.FINISHED_CANCELLED: finish_reasons.CANCELLED,
    RequestStatus.FINISHED_DEADLINE: finish_reasons.DEADLINE,
    RequestStatus.FINISHED_ERROR: finish_reasons.ERROR,
}
FINISHED_STATES = {reason: status for status, reason in FINISH_REASONS.items()}


@dataclass
class Timings:
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    start_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0

    @property
    def queue_ns(self) -> int:
        return max(self.start_ns - self.arrival_ns, 0) if self.start_ns else 0

    @property
    def time_to_first_token_ns(self) -> int:
        return max(self.first_token_ns - self.arrival_ns, 0) if self.first_token_ns else 0

    @property
    def decode_ns(self) -> int:
        return max(self.last_token_ns - self.first_token_ns, 0) if self.first_token_ns else 0


@dataclass(frozen=True)
class TokenEvent:
    """One step's output for one request; the last event has `finish_reason` set."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Of prompt_tokens, those whose KV was copied from the prefix cache (the last event only).
    cached_tokens: int = 0
    timings: Optional[Timings] = None
    error: Optional[BaseException] = None
    # Per token in token_ids, when the request asked for logprobs: (logprob, ((id, logprob), ...)).
    logprobs: tuple[tuple[float, tuple[tuple[int, float], ...]], ...] = ()


Emit = Callable[[TokenEvent], None]


@dataclass(eq=False)
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    emit: Emit = lambda event: None
    # Monotonic deadline in ns; 0 means none.
    deadline_ns: int = 0
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    cancel_event: threading.Event = field(default_factory=threading.Event)
    # Engine-side state (row in the KV buffer, prompt tokens prefilled, chooser, text stream).
    row: int = -1
    prefilled: int = 0
    # Prefix-cache blocks (prefix_cache.Block) this request copies from, pinned until copied.
    pinned: list = field(default_factory=list)
    prefix_hit: int = 0  # prompt tokens copied from the prefix cache
    state: Optional[RequestStream] = None  # set when the engine starts the request

    def cancel(self) -> None:
        """Thread-safe; the engine frees the request's slot before its next step."""
        self.cancel_event.set()

    @property
    def cached_tokens(self) -> int:
        """Positions written in this request's KV row."""
        return self.prefilled + max(len(self.output_ids) - 1, 0)

    def expired(self, now_ns: int) -> bool:
        return bool(self.deadline_ns) and now_ns >= self.deadline_ns
