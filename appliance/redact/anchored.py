"""The scan of text that is complete: every detector's matches through the shared anchors.

A stream runs it on what it still holds when it is closed, so whole-text redaction (a stream
given all its text at close) runs it on everything. Most detectors are ruled out at C speed:
none of their anchors' fixed strings occurs, or every run of digits is shorter than their
shortest match.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

from appliance.redact.detector import AnchorIndex, PatternDetector
from appliance.redact.detectors.numbers import NUMBER_RUN


class AnchoredScan:
    def __init__(self, detectors: Sequence[PatternDetector]):
        self.detectors = tuple(detectors)
        # Per detector: the hints of its anchors when every anchor has one (else None), and
        # whether its only anchor is the shared run of digits.
        self._plan = [(d, tuple(a.hint for a in d.anchors) if all(a.hint for a in d.anchors) else None,
                       d.anchors == (NUMBER_RUN,)) for d in detectors]
        # How far before a detector's position its pattern may look (what a stream must keep).
        self.context = max((d.bounds.lookbehind for d in detectors), default=0)

    def matches(self, norm: str, starts: Sequence[int]) -> Iterator[tuple[PatternDetector, re.Match]]:
        """Each detector's matches in `norm` from its start on, as `pattern.finditer(norm, start)`."""
        index = AnchorIndex(norm)
        longest_run = None
        for (detector, hints, enclosed), start in zip(self._plan, starts):
            if hints is not None:
                for hint in hints:
                    if hint in norm:
                        break
                else:
                    continue  # none of its anchors occurs: the common case, decided at C speed
            elif enclosed:
                if longest_run is None:
                    longest_run = max((end - begin for begin, end in index.occurrences(NUMBER_RUN)), default=0)
                if longest_run < detector.bounds.min_length:
                    continue  # every digit run is shorter than its shortest match
            for match in detector.find(norm, index, start):
                yield detector, match
