"""A generation request's state machine and the events it streams."""

from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from appliance.engine.sampling import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    # Finished states last: `status >= FINISHED_STOPPED` means done.
    FINISHED_STOPPED = 2
    FINISHED_LENGTH = 3
    FINISHED_CANCELLED = 4
    FINISHED_ERROR = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


# The one map from finished states to the wire's finish reasons.
FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_CANCELLED: "cancelled",
    RequestStatus.FINISHED_ERROR: "error",
}


@dataclass
class Timings:
    arrival_ns: int = field(default_factory=time.monotonic_ns)
    start_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0

    @property
    def queue_ns(self) -> int:
        return max(self.start_ns - self.arrival_ns, 0)

    @property
    def time_to_first_token_ns(self) -> int:
        return max(self.first_token_ns - self.arrival_ns, 0) if self.first_token_ns else 0

    @property
    def decode_ns(self) -> int:
        return max(self.last_token_ns - self.first_token_ns, 0) if self.first_token_ns else 0


@dataclass
class GenerationRequest:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    status: RequestStatus = RequestStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Thread-safe; the engine frees the request before its next step."""
        self.cancel_event.set()


@dataclass(frozen=True)
class TokenEvent:
    """One step's output for one request; the last event has `finish_reason` set."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: Optional[Timings] = None
    error: Optional[BaseException] = None
