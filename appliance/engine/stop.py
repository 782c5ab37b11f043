"""Stop strings on a text stream, without ever emitting part of a match.

Text that ends in a prefix of some stop string is held back until the next delta decides: either
the stop string completes (everything from it on is dropped) or it cannot anymore (the held text
is released). Only the longest such suffix is held, so the stream is delayed as little as the
rule allows.
"""

from __future__ import annotations

from typing import Optional


class StopStrings:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = tuple(stops)
        self._held = ""

    def push(self, delta: str) -> tuple[str, Optional[str]]:
        """Returns (text safe to emit, the stop string that matched or None)."""
        if not self.stops:
            return delta, None
        text = self._held + delta
        hit = min(((text.find(s), s) for s in self.stops if s in text), default=None)
        if hit is not None:
            self._held = ""
            return text[: hit[0]], hit[1]
        hold = self._longest_partial(text)
        self._held = text[len(text) - hold :] if hold else ""
        return text[: len(text) - hold], None

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:size]):
                    longest = size
                    break
        return longest
