"""Audit records: which entity types a request carried, how many, and keyed hashes of the values.

Never the values themselves. A hash is HMAC-SHA256 under a server secret over the type and the
canonical value, so the same card in two requests gives the same hash (an operator can see that
one card keeps coming back) while nobody without the secret can test a guess against it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from appliance.redact.canonical import canonical_value
from appliance.redact.spans import Entity


def keyed_hash(key: bytes, entity_type: str, value: str) -> str:
    message = f"{entity_type}\x00{canonical_value(entity_type, value)}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class AuditRecord:
    counts: Mapping[str, int]
    hashes: Mapping[str, tuple[str, ...]]  # per type, in order of appearance, repeats kept
    request_id: str | None = None
    direction: str = "input"  # "input": the prompt; "output": the generation

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict:
        return {"request_id": self.request_id, "direction": self.direction,
                "counts": dict(self.counts), "hashes": {t: list(h) for t, h in self.hashes.items()}}


@dataclass
class AuditCollector:
    """Collects entities as a redaction renders them (whole text or stream)."""

    key: bytes
    _counts: Counter = field(default_factory=Counter, repr=False)
    _hashes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        if not self.key:
            raise ValueError("the audit key must not be empty")

    def add(self, entity_type: str, value: str) -> None:
        self._counts[entity_type] += 1
        self._hashes.setdefault(entity_type, []).append(keyed_hash(self.key, entity_type, value))

    def record(self, request_id: str | None = None, direction: str = "input") -> AuditRecord:
        return AuditRecord(dict(self._counts), {t: tuple(h) for t, h in self._hashes.items()},
                           request_id, direction)


def audit_record(text: str, entities: Iterable[Entity], key: bytes, *, request_id: str | None = None,
                 direction: str = "input") -> AuditRecord:
    """The record for a finished redaction of `text` (e.g. `RedactionResult.entities`)."""
    collector = AuditCollector(key)
    for entity in entities:
        collector.add(entity.type, text[entity.start:entity.end])
    return collector.record(request_id, direction)
