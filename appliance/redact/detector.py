"""The detector contract: a bounded candidate regex, a validator, and anchors for fast scanning.

A detector's matches are defined as `pattern.finditer(normalised_text)`: leftmost, non-overlapping,
exactly as Python's `re` finds them. Everything else is an optimisation that must not change that
set, and tests check that it does not:

* Complete text (a whole text, or what a stream still holds when it is closed) is scanned only
  near *anchors*: cheap patterns every match must touch (an `@` for an email, a run of digits
  for a card). Python's `re` has no multi-pattern search, and running a dozen full patterns over
  every character would cost far more than the 20 MB/s budget allows.
* While a stream is open, each feed scans only the window that can no longer change (see
  stream.py), using `bounds` and `open_tail` derived from the pattern (see regex_analysis.py).

The validator turns a candidate match into the entity span (or None): checksums, calendars and
numbering plans live there, in the well-kept libraries, not in the regex. It must depend on the
matched text only (never on text around it): a stream keeps no more context than the pattern's
own look-arounds need, and the answer must be the same in both modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from appliance.redact.regex_analysis import PatternBounds, bounds, open_tail

Span = tuple[int, int]
Validator = Callable[[re.Match], Optional[Span]]


@dataclass(frozen=True)
class Anchor:
    """Every match starts at most `lead` characters before an occurrence of `pattern`, or inside it.

    `encloses`: a match starting inside an occurrence also ends inside it (the occurrence is a
    maximal run of the only characters the detector's pattern can consume), so the scan can stop
    at the occurrence's end and skip occurrences shorter than the shortest match.
    `hint`: a fixed string every occurrence contains, so `in` can rule the anchor out at C speed
    (most chat messages contain none of a detector's anchors).
    `group`: only occurrences where this group of `pattern` took part count, so detectors can
    share one scan (IBANs use the digit runs that follow two capitals).
    """

    pattern: re.Pattern
    lead: int = 0
    encloses: bool = False
    hint: str | None = None
    group: str | None = None


def literal_anchors(phrases: dict[str, int]) -> tuple[Anchor, ...]:
    """Anchors for fixed phrases: {literal: how far into a match it may first occur}."""
    return tuple(Anchor(re.compile(re.escape(literal)), lead, hint=literal) for literal, lead in phrases.items())


class AnchorIndex:
    """Occurrences of each anchor in one text, found once and shared by all detectors."""

    def __init__(self, text: str):
        self.text = text
        self._matches: dict[re.Pattern, list[re.Match]] = {}
        self._found: dict[tuple[re.Pattern, str | None, int], list[Span]] = {}

    def occurrences(self, anchor: Anchor, min_length: int = 0) -> list[Span]:
        """(start, end) of each occurrence; with `min_length`, only occurrences at least that long."""
        if anchor.hint is not None and anchor.hint not in self.text:
            return []
        key = (anchor.pattern, anchor.group, min_length)
        found = self._found.get(key)
        if found is None:
            matches = self._matches.get(anchor.pattern)
            if matches is None:
                matches = self._matches[anchor.pattern] = list(anchor.pattern.finditer(self.text))
            if anchor.group is not None:
                matches = [m for m in matches if m.start(anchor.group) >= 0]
            found = [m.span() for m in matches]
            if min_length:
                found = [span for span in found if span[1] - span[0] >= min_length]
            self._found[key] = found
        return found


class PatternDetector:
    def __init__(self, name: str, entity_type: str, pattern: re.Pattern, *, score: float,
                 anchors: tuple[Anchor, ...], validate: Validator | None = None):
        self.name = name
        self.entity_type = entity_type
        self.pattern = pattern
        self.score = score
        self.anchors = anchors
        self._validate = validate
        self.bounds: PatternBounds = bounds(pattern)
        self.open_tail: re.Pattern = open_tail(pattern)
        self.reach = self.bounds.reach

    def __repr__(self) -> str:
        return f"PatternDetector({self.name}, {self.entity_type})"

    def span(self, match: re.Match) -> Span | None:
        """The entity a candidate stands for, in the match's string coordinates, or None."""
        return self._validate(match) if self._validate is not None else match.span()

    def find(self, text: str, index: AnchorIndex | None = None, start: int = 0) -> list[re.Match]:
        """The same matches as `self.pattern.finditer(text, start)`, visiting only anchored windows."""
        index = index or AnchorIndex(text)
        min_length = self.bounds.min_length
        windows: list[tuple[int, int, bool]] = []
        for anchor in self.anchors:
            if anchor.hint is not None and anchor.hint not in text:
                continue
            found = index.occurrences(anchor, min_length if anchor.encloses else 0)
            lead, encloses = anchor.lead, anchor.encloses
            windows.extend((start - lead, end, encloses) for start, end in found)
        if not windows:
            return []
        if len(self.anchors) > 1:
            windows.sort()
        size, lookahead, reach = len(text), self.bounds.lookahead, self.reach
        pattern = self.pattern
        matches: list[re.Match] = []
        resume = start  # finditer's position: starts before it are settled
        for low, high, encloses in windows:
            if low < resume:
                low = resume
                if low >= high:
                    continue
            if encloses:
                # An enclosing run ends where the pattern must stop: search it in C, cut just past it.
                for match in pattern.finditer(text, low, min(size, high + lookahead)):
                    if match.start() >= high:
                        break
                    matches.append(match)
                    resume = match.end()
            else:
                # A few start positions before an anchor: try each. (A search would run on to the
                # full reach after the last of them, quadratic where anchors are dense.)
                at = low
                while at < high:
                    # An attempt at `at` reads nothing beyond at + reach, so cutting the string
                    # there changes nothing.
                    match = pattern.match(text, at, min(size, at + reach))
                    if match is None:
                        at += 1
                        continue
                    matches.append(match)
                    at = resume = match.end()
            if resume < high:
                resume = high
        return matches
