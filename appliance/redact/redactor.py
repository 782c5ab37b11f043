"""The Redactor: detectors + overlap rule + operator, for whole texts and for streams.

    redactor = Redactor()                       # all pattern types, replace with [TYPE]
    redactor.redact("mail me at a@b.com").text  # 'mail me at [EMAIL_ADDRESS]'
    stream = redactor.stream()
    out = stream.feed("mail me at a@") + stream.feed("b.com") + stream.close()   # the same text

One Redactor is built per configuration (it compiles the detectors) and shared by requests;
each `redact` call or `stream()` is one request, with its own vault and audit collector. A
`redact` call is a stream given the whole text at its close (stream.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from appliance.redact.anchored import AnchoredScan
from appliance.redact.audit import AuditCollector
from appliance.redact.detector import PatternDetector
from appliance.redact.detectors import PATTERN_TYPES, default_detectors
from appliance.redact.ner import NER_TYPES, CombinedNer, NerDetector
from appliance.redact.operators import OPERATOR_NAMES, Operator, make_operator
from appliance.redact.spans import Entity
from appliance.redact.stream import RedactionStream
from appliance.redact.vault import PseudonymVault


@dataclass(frozen=True)
class RedactorSettings:
    """What one Redactor detects and how it rewrites it (the daemon's redaction section, its
    policies and audit key, is appliance.server.config.RedactionConfig)."""

    operator: str = "replace"  # replace | mask | pseudonymize (see operators.py)
    entity_types: tuple[str, ...] | None = None  # types to detect (patterns' and NER's); None: all
    phone_regions: tuple[str, ...] = ("CN", "US", "GB")  # where numbers without +/00 may come from
    min_score: float = 0.0
    mask_char: str = "*"
    mask_keep_last: int = 4

    def __post_init__(self):
        if self.operator not in OPERATOR_NAMES:
            raise ValueError(f"operator: must be one of {OPERATOR_NAMES}")
        known = set(PATTERN_TYPES) | set(NER_TYPES)
        if self.entity_types is not None and not set(self.entity_types) <= known:
            raise ValueError(f"entity_types: unknown types {sorted(set(self.entity_types) - known)}")
        if not 0.0 <= self.min_score <= 1.0:
            raise ValueError("min_score: must be between 0 and 1")
        if len(self.mask_char) != 1:
            raise ValueError("mask_char: must be one character")
        if self.mask_keep_last < 0:
            raise ValueError("mask_keep_last: must not be negative")


@dataclass(frozen=True)
class RedactionResult:
    text: str  # the redacted text
    entities: tuple[Entity, ...]  # what was redacted; offsets into the input text
    vault: PseudonymVault | None = None  # set when the operator pseudonymises


class Redactor:
    def __init__(self, config: RedactorSettings | None = None, *,
                 detectors: Sequence[PatternDetector] | None = None, ner: NerDetector | None = None):
        self.config = config or RedactorSettings()
        types = self.config.entity_types
        if detectors is None:
            patterns = None if types is None else tuple(t for t in types if t in PATTERN_TYPES)
            detectors = default_detectors(patterns, self.config.phone_regions)
        self.detectors: tuple[PatternDetector, ...] = tuple(detectors)
        if ner is not None and types is not None:
            ner = CombinedNer([ner], ner.max_chars, entity_types=types)
        self.ner = ner
        self._scan = AnchoredScan(tuple(d for d in self.detectors if d.score >= self.config.min_score))

    @property
    def max_holdback(self) -> int:
        """The most characters a stream holds back: the longest pattern reach, or with NER the
        longest segment it may wait for, whichever is more."""
        reach = max((d.reach for d in self.detectors), default=0)
        return max(reach, self.ner.max_chars) if self.ner is not None else reach

    def detect(self, text: str) -> list[Entity]:
        """The entities `redact` would replace, sorted by start."""
        return list(self.redact(text, operator="replace").entities)

    def redact(self, text: str, *, operator: str | Operator | None = None, vault: PseudonymVault | None = None,
               audit: AuditCollector | None = None) -> RedactionResult:
        """A stream given the whole text at once: one scanner for both, so they cannot disagree."""
        stream = self.stream(operator=operator, vault=vault, audit=audit)
        redacted = stream.close(text)
        return RedactionResult(redacted, tuple(stream.entities), stream.vault)

    def stream(self, *, operator: str | Operator | None = None, vault: PseudonymVault | None = None,
               audit: AuditCollector | None = None) -> RedactionStream:
        render, vault = self._renderer(operator, vault, audit)
        return RedactionStream(self.detectors, render, ner=self.ner, min_score=self.config.min_score, vault=vault,
                               scan=self._scan)

    # ---------------------------------------------------------------------------------------------

    def _renderer(self, operator, vault, audit):
        operator = operator or self.config.operator
        if isinstance(operator, str):
            if operator == "pseudonymize" and vault is None:
                vault = PseudonymVault()
            operator = make_operator(operator, vault=vault, mask_char=self.config.mask_char,
                                     mask_keep_last=self.config.mask_keep_last)

        def render(entity: Entity, value: str) -> str:
            if audit is not None:
                audit.add(entity.type, value)
            return operator.render(entity.type, value)

        return render, vault
