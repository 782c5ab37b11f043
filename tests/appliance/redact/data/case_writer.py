"""What make_eval_set.py and make_names_set.py share: filling a template's {slots}, telling a
case's language, and writing the cases as numbered JSON lines."""

from __future__ import annotations

import json
from pathlib import Path


def fill(makers: dict, template: str) -> tuple[str, list[dict]]:
    """`template` with each {slot} replaced by `makers[slot]`'s value, and the spans it labels.
    A maker's type None, or a slot written {!slot}, fills without a label (a distractor)."""
    text, spans, rest = "", [], template
    while "{" in rest:
        before, _, rest = rest.partition("{")
        slot, _, rest = rest.partition("}")
        text += before
        entity_type, make = makers[slot.lstrip("!")]
        value = make()
        if entity_type is not None and not slot.startswith("!"):
            spans.append({"type": entity_type, "start": len(text), "end": len(text) + len(value)})
        text += value
    return text + rest, spans


def language(text: str) -> str:
    return "zh" if any("\u4e00" <= c <= "\u9fff" for c in text) else "en"


def write_cases(out: Path, cases: list[dict], id_prefix: str) -> None:
    with out.open("w", encoding="utf-8") as f:
        for number, case in enumerate(cases, 1):
            f.write(json.dumps({"id": f"{id_prefix}-{number:04d}", **case}, ensure_ascii=False) + "\n")
    print(f"wrote {len(cases)} cases to {out}")
