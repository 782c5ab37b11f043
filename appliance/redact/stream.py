"""Redaction of a token stream, equal to redacting the whole text at once.

Invariant: for any split of a text into chunks, the concatenated `feed()` outputs plus `close()`
equal `Redactor.redact(text).text`. It holds by construction for everything but the search
itself: whole-text redaction is this stream given all its text at `close()`, so overlap rules,
NER segments and rendering are one code path. What differs is how matches are enumerated: a
feed searches each detector's pattern from its position up to what is settled (below); a close
finds the rest through the anchors (anchored.py), fast on whole texts. Both give
`pattern.finditer`'s matches, which the streaming tests check for any split.

The stream holds back only what could still change:

1. Per detector, a scan position `pos`: every start before it is settled. An attempt starting at
   t is settled once the text up to t + reach is known (reach = longest match + lookahead, from
   regex_analysis.bounds), or earlier, once the text from t can no longer be the beginning of
   anything the pattern could consume or peek at (regex_analysis.open_tail). So a detector holds
   back from the earliest *open* tail position: usually nothing, a partial word for email,
   a run of digits for numbers, everything after `-----BEGIN ... PRIVATE KEY-----` until its END
   line (or the 8192-character cap). Never more than its reach.
2. No entity found later can start before U = min(pos). Overlapping entities form groups; a group
   whose last end is at most U can no longer be joined, so it is settled by the same rule as the
   whole text (spans.resolve_overlaps).
3. Everything before min(U, first unsettled entity) is final and is emitted.

How much that is: on chat text about 2 characters on average (a partial word or number), at
most a few tokens. The worst case is bounded by the detectors' reaches (`Redactor.max_holdback`):
email 641, phone 76 (with an extension), an AWS secret key 126, person 80, a bearer token
4110, a PEM block 8343 characters.

Each feed scans only from each detector's `pos`, so the work per chunk does not grow with the
length of the stream. With NER, the stream also holds back the open segment (ner.py). Chunks
may be bytes (UTF-8, split anywhere, even inside a character).
"""

from __future__ import annotations

import codecs
from typing import Callable, Sequence

from appliance.redact.anchored import AnchoredScan
from appliance.redact.detector import PatternDetector
from appliance.redact.ner import NerDetector, scan_segments
from appliance.redact.normalize import normalize
from appliance.redact.spans import Entity, resolve_overlaps

Render = Callable[[Entity, str], str]

_TRIM_AT = 2048  # drop consumed text once this much has piled up (amortises the copy)


class RedactionStream:
    def __init__(self, detectors: Sequence[PatternDetector], render: Render, *, ner: NerDetector | None = None,
                 min_score: float = 0.0, vault=None, scan: AnchoredScan | None = None):
        """`scan`: the AnchoredScan of the detectors scoring at least `min_score`, when the caller
        has one (a Redactor builds it once for all its streams)."""
        self._anchored = scan or AnchoredScan([d for d in detectors if d.score >= min_score])
        self._detectors = self._anchored.detectors
        self._render = render
        self._ner = ner
        self._min_score = min_score
        self.vault = vault  # the pseudonym vault, when the operator pseudonymises
        self.entities: list[Entity] = []  # emitted entities, offsets into the whole streamed text
        self._context = self._anchored.context
        self._positions = [0] * len(self._detectors)
        self._ner_pos = 0
        self._orig = ""  # original text from global offset _base on
        self._norm = ""  # its normalised twin, same length
        self._base = 0
        self._end = 0
        self._emitted = 0
        self._pending: list[Entity] = []  # found, overlap not yet settled
        self._ready: list[Entity] = []  # kept, sorted by start, not yet emitted
        self._decoder = None
        self._closed = False

    @property
    def held_back(self) -> int:
        """Characters received but not yet emitted."""
        return self._end - self._emitted

    def feed(self, chunk: str | bytes) -> str:
        if self._closed:
            raise RuntimeError("feed() after close()")
        if not self._take(chunk):
            return ""
        return self._emit(self._scan(final=False))

    def close(self, last: str | bytes = "") -> str:
        """Everything still held, redacted, with `last` (a final chunk) added first. Whole-text
        redaction is `close(text)` on a new stream."""
        if self._closed:
            if last:
                raise RuntimeError("close() with text after close()")
            return ""
        if last:
            self._take(last)
        if self._decoder is not None:
            rest = self._decoder.decode(b"", final=True)
            if rest:
                self._append(rest)
        self._closed = True
        return self._emit(self._scan(final=True))

    # --- scanning -----------------------------------------------------------------------------

    def _take(self, chunk: str | bytes) -> bool:
        """Appends a chunk (UTF-8 bytes are decoded as far as they are complete); False if empty."""
        if isinstance(chunk, (bytes, bytearray)):
            if self._decoder is None:
                self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            chunk = self._decoder.decode(bytes(chunk))
        elif self._decoder is not None and self._decoder.getstate()[0]:
            raise ValueError("a str chunk arrived while a UTF-8 character was incomplete")
        if not chunk:
            return False
        self._append(chunk)
        return True

    def _append(self, chunk: str) -> None:
        self._orig += chunk
        self._norm += normalize(chunk)
        self._end += len(chunk)

    def _hold(self, detector: PatternDetector, pos: int) -> int:
        """Earliest start at or after pos whose attempt may still read text not yet received."""
        low = max(pos, self._end - detector.reach + 1)
        tail = detector.open_tail.search(self._norm, low - self._base)
        return tail.start() + self._base if tail is not None else self._end

    def _scan(self, final: bool) -> int:
        """Finds every entity that is now settled; returns the emit frontier."""
        if final:
            self._scan_rest()
        else:
            self._scan_settled()
        if self._ner is not None:
            self._scan_ner(final)
        frontier = min(self._positions, default=self._end)
        if self._ner is not None:
            frontier = min(frontier, self._ner_pos)
        return self._settle(self._end if final else frontier)

    def _scan_settled(self) -> None:
        """Matches that the text still to come cannot change, searched from each detector's pos."""
        norm, base, positions = self._norm, self._base, self._positions
        for i, detector in enumerate(self._detectors):
            pos = positions[i]
            hold = self._hold(detector, pos)
            search = detector.pattern.search
            while pos < hold:
                match = search(norm, pos - base)
                if match is None or match.start() + base >= hold:
                    break
                self._found(detector, match)
                pos = match.end() + base
                if pos > hold:
                    hold = self._hold(detector, pos)
            positions[i] = hold  # every start before it is settled (and its match, if any, taken)

    def _scan_rest(self) -> None:
        """At the end of the text every match is settled: the anchored scan finds them (the same
        matches as the search above would, which the streaming tests check)."""
        base = self._base
        for detector, match in self._anchored.matches(self._norm, [pos - base for pos in self._positions]):
            self._found(detector, match)
        self._positions = [self._end] * len(self._detectors)

    def _found(self, detector: PatternDetector, match) -> None:
        span = detector.span(match)
        if span is not None:
            self._pending.append(Entity(detector.entity_type, span[0] + self._base, span[1] + self._base,
                                        detector.score))

    def _scan_ner(self, final: bool) -> None:
        base = self._base
        entities, stop = scan_segments(self._ner, self._orig, self._ner_pos - base, self._end - base, final=final,
                                       offset=base)
        self._pending.extend(e for e in entities if e.score >= self._min_score)
        self._ner_pos = stop + base

    def _settle(self, frontier: int) -> int:
        """Moves overlap groups that nothing later can join to `_ready`; returns what may be emitted."""
        pending = self._pending
        if not pending:
            return frontier
        pending.sort(key=lambda e: (e.start, e.end))
        unsettled: list[Entity] = []
        group: list[Entity] = []
        group_end = -1
        for entity in pending + [None]:
            if entity is not None and group and entity.start < group_end:
                group.append(entity)
                group_end = max(group_end, entity.end)
                continue
            if group:
                if group_end <= frontier:
                    self._ready.extend(resolve_overlaps(group))
                else:
                    unsettled.extend(group)
            if entity is not None:
                group, group_end = [entity], entity.end
        self._pending = unsettled
        return min(frontier, unsettled[0].start) if unsettled else frontier

    # --- output -------------------------------------------------------------------------------

    def _emit(self, until: int) -> str:
        base, orig, ready = self._base, self._orig, self._ready
        out = []
        cursor = self._emitted
        taken = 0
        while taken < len(ready) and ready[taken].start < until:
            entity = ready[taken]
            taken += 1
            out.append(orig[cursor - base:entity.start - base])
            out.append(self._render(entity, orig[entity.start - base:entity.end - base]))
            self.entities.append(entity)
            cursor = entity.end
        if taken:
            del ready[:taken]
        out.append(orig[cursor - base:until - base])
        self._emitted = until
        self._trim()
        return "".join(out)

    def _trim(self) -> None:
        keep = min(self._emitted, min(self._positions, default=self._end) - self._context)
        if self._ner is not None:
            keep = min(keep, self._ner_pos)
        cut = keep - self._base
        if cut > _TRIM_AT:
            self._orig = self._orig[cut:]
            self._norm = self._norm[cut:]
            self._base = keep
