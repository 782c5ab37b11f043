"""Entities found in a text, and the one rule that settles overlapping finds.

Offsets are code points into the caller's text (Python string indices). An Entity never holds
the value it covers, so printing or logging one cannot leak PII.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Entity:
    type: str
    start: int
    end: int
    score: float

    def to_dict(self) -> dict:
        return {"type": self.type, "start": self.start, "end": self.end, "score": self.score}


def priority(entity: Entity) -> tuple:
    """Higher score first, then longer, then earlier; the type name only breaks exact ties."""
    return (-entity.score, entity.start - entity.end, entity.start, entity.type)


def resolve_overlaps(entities: Iterable[Entity]) -> list[Entity]:
    """Greedy by priority: keep an entity unless it overlaps one already kept. Sorted by start.

    The outcome for a group of mutually overlapping entities depends only on that group, which
    is what lets the stream settle groups as soon as nothing later can join them.
    """
    starts: list[int] = []
    kept: list[Entity] = []  # sorted by start; never overlapping, so also sorted by end
    for entity in sorted(entities, key=priority):
        i = bisect_right(starts, entity.start)
        if i > 0 and kept[i - 1].end > entity.start:
            continue
        if i < len(kept) and kept[i].start < entity.end:
            continue
        starts.insert(i, entity.start)
        kept.insert(i, entity)
    return kept
