"""Per-type precision and recall of the redactor on a labelled JSONL set.

    python -m appliance.redact.evaluate tests/appliance/redact/data/eval_set.jsonl --min 0.98

A line is {"text": ..., "spans": [{"type", "start", "end"}, ...]}. A found entity counts only if
type, start and end all equal a labelled span. Exit status 1 when any pattern type present in
the set or the output has precision or recall below --min; 2 on unreadable input. Failures are
listed by case id and offsets (add --show-text to print the texts, which in a real set are PII).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from appliance.redact.detectors import PATTERN_TYPES
from appliance.redact.redactor import Redactor


@dataclass(frozen=True)
class TypeScore:
    type: str
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        expected = self.true_positives + self.false_negatives
        return self.true_positives / expected if expected else 1.0


@dataclass(frozen=True)
class Miss:
    case_id: str
    kind: str  # "missed" or "spurious"
    type: str
    start: int
    end: int


def load_cases(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate(cases: list[dict], redactor: Redactor | None = None) -> tuple[list[TypeScore], list[Miss]]:
    redactor = redactor or Redactor()
    tp, fp, fn = Counter(), Counter(), Counter()
    misses = []
    for number, case in enumerate(cases):
        case_id = case.get("id", f"line-{number + 1}")
        expected = {(s["type"], s["start"], s["end"]) for s in case.get("spans", [])}
        found = {(e.type, e.start, e.end) for e in redactor.detect(case["text"])}
        for key in found & expected:
            tp[key[0]] += 1
        for key in sorted(found - expected):
            fp[key[0]] += 1
            misses.append(Miss(case_id, "spurious", *key))
        for key in sorted(expected - found):
            fn[key[0]] += 1
            misses.append(Miss(case_id, "missed", *key))
    types = sorted(set(tp) | set(fp) | set(fn), key=lambda t: (t not in PATTERN_TYPES, t))
    return [TypeScore(t, tp[t], fp[t], fn[t]) for t in types], misses


def format_table(scores: list[TypeScore]) -> str:
    lines = [f"{'type':16} {'expected':>8} {'found':>6} {'TP':>5} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>7}"]
    for s in scores:
        lines.append(f"{s.type:16} {s.true_positives + s.false_negatives:8d} {s.true_positives + s.false_positives:6d} "
                     f"{s.true_positives:5d} {s.false_positives:4d} {s.false_negatives:4d} {s.precision:9.3f} {s.recall:7.3f}")
    total = TypeScore("all", sum(s.true_positives for s in scores), sum(s.false_positives for s in scores),
                      sum(s.false_negatives for s in scores))
    lines.append(f"{'all':16} {total.true_positives + total.false_negatives:8d} {total.true_positives + total.false_positives:6d} "
                 f"{total.true_positives:5d} {total.false_positives:4d} {total.false_negatives:4d} "
                 f"{total.precision:9.3f} {total.recall:7.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.redact.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="JSONL file of labelled cases")
    parser.add_argument("--min", type=float, default=0.0, help="fail if a pattern type's precision or recall is below this")
    parser.add_argument("--show-text", action="store_true", help="print the text of failing cases")
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.path)
    except (OSError, ValueError) as exc:
        print(f"evaluate: cannot read {args.path}: {type(exc).__name__}", file=sys.stderr)
        return 2
    scores, misses = evaluate(cases)
    print(f"{len(cases)} cases")
    print(format_table(scores))
    texts = {c.get("id", f"line-{n + 1}"): c["text"] for n, c in enumerate(cases)}
    for miss in misses:
        detail = f"  {texts[miss.case_id]!r}" if args.show_text else ""
        print(f"{miss.kind:8} {miss.type:16} {miss.case_id} [{miss.start}:{miss.end}]{detail}")
    below = [s.type for s in scores if s.type in PATTERN_TYPES and min(s.precision, s.recall) < args.min]
    if below:
        print(f"below {args.min}: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
