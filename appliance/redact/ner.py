"""Optional NER backends behind one small interface, and the segmentation that keeps them stream-safe.

A model's answer about a word can depend on any other word in its input, so no character window
bounds it. To keep the streaming invariant anyway, NER never sees the text as a whole: it sees
segments that end at a sentence or line boundary (or after `max_chars`), cut the same way
whether the text arrives at once or in chunks. The stream holds back the open segment, so
enabling NER costs up to one sentence of delay; pattern detectors alone add far less.
"""

from __future__ import annotations

import re
from typing import Protocol, Sequence, runtime_checkable

from appliance.redact.spans import Entity

SEGMENT_END = re.compile(r"[\n.!?。！？]")


@runtime_checkable
class NerDetector(Protocol):
    """What an NER backend implements. Offsets are code points into the segment it was given."""

    entity_types: Sequence[str]
    max_chars: int  # longest segment the backend accepts

    def detect(self, text: str) -> list[Entity]:
        ...


class NerUnavailable(RuntimeError):
    """The backend's library is not installed."""


def segment_end(text: str, start: int, end: int, *, final: bool, max_chars: int) -> int | None:
    """End of the segment starting at `start` in text[:end], or None while it may still grow."""
    limit = start + max_chars
    boundary = SEGMENT_END.search(text, start, min(end, limit))
    if boundary is not None:
        return boundary.end()
    if end >= limit:
        return limit
    return end if final and end > start else None


def ner_entities(ner: NerDetector, segment: str, offset: int) -> list[Entity]:
    """The backend's entities for one segment, shifted to text offsets; unknown types dropped."""
    wanted = set(ner.entity_types)
    return [Entity(e.type, e.start + offset, e.end + offset, e.score) for e in ner.detect(segment)
            if e.type in wanted and 0 <= e.start < e.end <= len(segment)]


class PresidioNerDetector:
    """PERSON, LOCATION (and whatever else asked for) from Presidio's analyzer with a spaCy model.

    Only Presidio's NER recognizers run: the pattern types are ours, validated more strictly.
    """

    def __init__(self, entity_types: Sequence[str] = ("PERSON", "LOCATION"), *, language: str = "en",
                 min_score: float = 0.5, max_chars: int = 512, analyzer=None):
        if analyzer is None:
            try:
                from presidio_analyzer import AnalyzerEngine
            except ImportError as exc:
                raise NerUnavailable("presidio-analyzer is not installed") from exc
            analyzer = AnalyzerEngine()
        self._analyzer = analyzer
        self.entity_types = tuple(entity_types)
        self.language = language
        self.min_score = min_score
        self.max_chars = max_chars

    def detect(self, text: str) -> list[Entity]:
        results = self._analyzer.analyze(text=text, language=self.language, entities=list(self.entity_types))
        return [Entity(r.entity_type, r.start, r.end, float(r.score)) for r in results if r.score >= self.min_score]
