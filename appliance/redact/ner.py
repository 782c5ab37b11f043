"""NER backends behind one small interface, and the segmentation that keeps them stream-safe.

A model's answer about a word can depend on any other word in its input, so no character window
bounds it. To keep the streaming invariant anyway, NER never sees the text as a whole: it sees
segments that end at a sentence or clause boundary (or near `max_chars`), cut the same way
whether the text arrives at once or in chunks, because each cut depends only on the segment's
own text and at most one character after it. The stream holds back the open segment, so NER
costs up to one sentence (one clause in Chinese) of delay; pattern detectors alone add far less.

`scan_segments` is the one loop over segments: whole-text redaction calls it once with
`final=True`, a stream calls it on every feed from where it stopped.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Protocol, Sequence, runtime_checkable

from appliance.redact.spans import Entity

NER_TYPES = ("PERSON", "LOCATION")
NER_LANGUAGES = ("zh", "en")

# Ends a segment by itself: line breaks, ! ?, and the Chinese sentence and clause marks (a
# Chinese clause is long enough for the model and keeps the delay short; "，" never occurs
# inside a Chinese name or address). "." is decided by _ends_sentence.
_CANDIDATE = re.compile(r"[\n!?。！？；，.]")
# Words that a "." follows without ending the sentence: titles before a name, street words
# inside an address, and the like. A single letter ("J. Smith") never ends one either.
_ABBREVIATIONS = frozenset(
    "mr mrs ms miss dr prof sr jr st ave rd blvd ln ct pl hwy pkwy apt ste no vs etc inc ltd co mt ft "
    "jan feb mar apr jun jul aug sep sept oct nov dec e.g i.e".split())
_WORD_BEFORE = re.compile(r"([A-Za-z][A-Za-z.]*)\Z")


@runtime_checkable
class NerDetector(Protocol):
    """What an NER backend implements. Offsets are code points into the segment it was given."""

    entity_types: Sequence[str]
    max_chars: int  # longest segment the backend accepts

    def detect(self, text: str) -> list[Entity]:
        ...


class NerUnavailable(RuntimeError):
    """The backend's library or model files are not installed."""


def _ends_sentence(text: str, dot: int, start: int) -> bool:
    """A "." at `dot` ends the sentence: whitespace follows, and no title or initial precedes."""
    if not text[dot + 1].isspace():
        return False  # "a.b@example.com", "3.5", "v1.2"
    word = _WORD_BEFORE.search(text, start, dot)
    if word is None:
        return True
    word = word.group(1).lower().rstrip(".")
    return len(word) > 1 and word not in _ABBREVIATIONS


def segment_end(text: str, start: int, end: int, *, final: bool, max_chars: int) -> int | None:
    """End of the segment starting at `start` in text[:end], or None while it may still grow."""
    limit = start + max_chars
    for boundary in _CANDIDATE.finditer(text, start, min(end, limit)):
        at = boundary.start()
        if text[at] != ".":
            return at + 1
        if at + 1 == end:
            return end if final else None  # what follows the "." decides
        if _ends_sentence(text, at, start):
            return at + 1
    if end >= limit:
        # No boundary: cut after the last space of the window's second half, so a name or an
        # address is cut only where the text runs that long without one.
        space = text.rfind(" ", start + max_chars // 2, limit)
        return space + 1 if space >= 0 else limit
    return end if final and end > start else None


def scan_segments(ner: NerDetector, text: str, start: int, end: int, *, final: bool,
                  offset: int = 0) -> tuple[list[Entity], int]:
    """The entities of every complete segment of text[start:end], at `offset` + their index in
    `text`, and where the first incomplete segment begins (== end once everything is scanned)."""
    wanted = set(ner.entity_types)
    found: list[Entity] = []
    while (stop := segment_end(text, start, end, final=final, max_chars=ner.max_chars)) is not None:
        segment = text[start:stop]
        found.extend(Entity(e.type, e.start + start + offset, e.end + start + offset, e.score)
                     for e in ner.detect(segment) if e.type in wanted and 0 <= e.start < e.end <= len(segment))
        start = stop
    return found, start


class CombinedNer:
    """Several backends (one per language) as one: each sees every segment and skips what is not
    its language itself (the Chinese model runs only where there are Han characters).
    `entity_types`: report only these (default: every type a backend reports)."""

    def __init__(self, backends: Sequence[NerDetector], max_chars: int = 256,
                 entity_types: Sequence[str] | None = None):
        self.backends = tuple(backends)
        offered = {t for b in self.backends for t in b.entity_types}
        self.entity_types = tuple(sorted(offered if entity_types is None else offered & set(entity_types)))
        self.max_chars = min([max_chars, *(b.max_chars for b in self.backends)])

    def detect(self, text: str) -> list[Entity]:
        return [entity for backend in self.backends for entity in backend.detect(text)]


@lru_cache(maxsize=None)
def _backend(language: str) -> NerDetector:
    # Loaded once per process (a model session, a name table): every Redactor shares them.
    if language == "zh":
        from appliance.redact.ner_zh import LacNer
        return LacNer()
    if language == "en":
        from appliance.redact.ner_en import EnglishNer
        return EnglishNer()
    raise ValueError(f"ner: unknown language {language!r}; known: {', '.join(NER_LANGUAGES)}")


def load_ner(languages: Sequence[str]) -> tuple[NerDetector | None, dict[str, str]]:
    """One detector for the installed backends among `languages` (None when none is), and for
    each language left out, why (a sentence naming what to install)."""
    backends, missing = [], {}
    for language in dict.fromkeys(languages):
        try:
            backends.append(_backend(language))
        except NerUnavailable as exc:
            missing[language] = str(exc)
    return (CombinedNer(backends) if backends else None), missing


class PresidioNerDetector:
    """PERSON, LOCATION (and whatever else asked for) from Presidio's analyzer with a spaCy model.

    Only Presidio's NER recognizers run: the pattern types are ours, validated more strictly.
    """

    def __init__(self, entity_types: Sequence[str] = NER_TYPES, *, language: str = "en",
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
