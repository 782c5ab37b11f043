"""Per-type and per-language precision and recall of the redactor on a labelled JSONL set.

    python -m appliance.redact.evaluate tests/appliance/redact/data/eval_set.jsonl --min 0.98
    python -m appliance.redact.evaluate tests/appliance/redact/data/names_set.jsonl --split test
    python -m appliance.redact.evaluate tests/appliance/redact/data/names_set.jsonl --presidio

A line is {"text": ..., "spans": [{"type", "start", "end"}, ...], "lang": ..., "split": ...}. A
found entity counts only if type, start and end all equal a labelled span. NER backends run for
the languages given by --ner (default: every installed one, as the daemon does). Exit status 1
when any type present in the set or the output has precision or recall below --min, or when a
labelled value is left in its redacted text (a leak); 2 on unreadable input. Failures are listed
by case id and offsets (add --show-text to print the texts, which in a real set are PII).
--presidio adds Presidio's figures per type with the same NER (presidio_eval.py; skipped with a
line saying why when presidio-analyzer is not installed).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from appliance.redact.detectors import PATTERN_TYPES
from appliance.redact.ner import NER_LANGUAGES, NER_TYPES, load_ner
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


def evaluate(cases: list[dict], redactor: Redactor | None = None, *, by_language: bool = False
             ) -> tuple[list[TypeScore], list[Miss]]:
    """Scores per type (with `by_language`, per "TYPE/lang" as well), and every miss."""
    redactor = redactor or Redactor()
    tp, fp, fn = Counter(), Counter(), Counter()
    misses = []
    for number, case in enumerate(cases):
        case_id = case.get("id", f"line-{number + 1}")
        expected = {(s["type"], s["start"], s["end"]) for s in case.get("spans", [])}
        found = {(e.type, e.start, e.end) for e in redactor.detect(case["text"])}
        groups = ["", "/" + case.get("lang", "?")] if by_language else [""]
        for group in groups:
            for key in found & expected:
                tp[key[0] + group] += 1
            for key in found - expected:
                fp[key[0] + group] += 1
            for key in expected - found:
                fn[key[0] + group] += 1
        misses += [Miss(case_id, "spurious", *key) for key in sorted(found - expected)]
        misses += [Miss(case_id, "missed", *key) for key in sorted(expected - found)]
    types = sorted(set(tp) | set(fp) | set(fn), key=lambda t: (t.split("/")[0] not in PATTERN_TYPES, t))
    return [TypeScore(t, tp[t], fp[t], fn[t]) for t in types], misses


def leaks(cases: list[dict], redactor: Redactor) -> list[str]:
    """Ids of cases whose redacted text still holds a labelled value."""
    found = []
    for number, case in enumerate(cases):
        redacted = redactor.redact(case["text"]).text
        if any(case["text"][s["start"]:s["end"]] in redacted for s in case.get("spans", [])):
            found.append(case.get("id", f"line-{number + 1}"))
    return found


def redactor_with_ner(languages) -> Redactor:
    ner, missing = load_ner(languages)
    for language, reason in missing.items():
        print(f"evaluate: NER for {language} left out: {reason}", file=sys.stderr)
    return Redactor(ner=ner)


def format_table(scores: list[TypeScore]) -> str:
    lines = [f"{'type':16} {'expected':>8} {'found':>6} {'TP':>5} {'FP':>4} {'FN':>4} {'precision':>9} {'recall':>7}"]
    for s in scores:
        lines.append(f"{s.type:16} {s.true_positives + s.false_negatives:8d} {s.true_positives + s.false_positives:6d} "
                     f"{s.true_positives:5d} {s.false_positives:4d} {s.false_negatives:4d} {s.precision:9.3f} {s.recall:7.3f}")
    types = [s for s in scores if "/" not in s.type]  # the per-language rows count the same finds again
    total = TypeScore("all", sum(s.true_positives for s in types), sum(s.false_positives for s in types),
                      sum(s.false_negatives for s in types))
    lines.append(f"{'all':16} {total.true_positives + total.false_negatives:8d} {total.true_positives + total.false_positives:6d} "
                 f"{total.true_positives:5d} {total.false_positives:4d} {total.false_negatives:4d} "
                 f"{total.precision:9.3f} {total.recall:7.3f}")
    return "\n".join(lines)


def presidio_comparison(cases: list[dict], ours: list[TypeScore], ner) -> str:
    """Per type both have: our precision and recall beside Presidio's with the same NER."""
    from appliance.redact.presidio_eval import SHARED_TYPES, PresidioDetector, PresidioUnavailable

    try:
        detector = PresidioDetector(ner)
    except PresidioUnavailable as exc:
        return f"presidio comparison skipped: {exc}"
    theirs = {s.type: s for s in evaluate(cases, detector, by_language=True)[0]}
    lines = [f"{'type':16} {'ours P':>7} {'ours R':>7} {'presidio P':>10} {'presidio R':>10}"]
    for score in ours:
        if score.type.split("/")[0] in SHARED_TYPES:
            other = theirs.get(score.type, TypeScore(score.type, 0, 0, score.true_positives + score.false_negatives))
            lines.append(f"{score.type:16} {score.precision:7.3f} {score.recall:7.3f} "
                         f"{other.precision:10.3f} {other.recall:10.3f}")
    return "\n".join(lines)


def _languages(value: str) -> tuple[str, ...]:
    chosen = tuple(part for part in value.split(",") if part and part != "none")
    unknown = set(chosen) - set(NER_LANGUAGES)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown language {sorted(unknown)[0]!r}; known: {', '.join(NER_LANGUAGES)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance.redact.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="JSONL file of labelled cases")
    parser.add_argument("--min", type=float, default=0.0, help="fail if a type's precision or recall is below this")
    parser.add_argument("--ner", type=_languages, default=NER_LANGUAGES,
                        help=f"NER languages, comma-separated from {','.join(NER_LANGUAGES)}, or none (default: all)")
    parser.add_argument("--split", help="only cases of this split (dev, test)")
    parser.add_argument("--show-text", action="store_true", help="print the text of failing cases")
    parser.add_argument("--presidio", action="store_true", help="compare with Presidio using the same NER")
    args = parser.parse_args(argv)
    try:
        cases = load_cases(args.path)
    except (OSError, ValueError) as exc:
        print(f"evaluate: cannot read {args.path}: {type(exc).__name__}", file=sys.stderr)
        return 2
    if args.split:
        cases = [case for case in cases if case.get("split") == args.split]
    redactor = redactor_with_ner(args.ner)
    scores, misses = evaluate(cases, redactor, by_language=True)
    leaked = leaks(cases, redactor)
    print(f"{len(cases)} cases; NER: {','.join(args.ner) or 'none'}")
    print(format_table(scores))
    print(f"cases with a labelled value left in the redacted text: {len(leaked)}")
    texts = {c.get("id", f"line-{n + 1}"): c["text"] for n, c in enumerate(cases)}
    for miss in misses:
        detail = f"  {texts[miss.case_id]!r}" if args.show_text else ""
        print(f"{miss.kind:8} {miss.type:16} {miss.case_id} [{miss.start}:{miss.end}]{detail}")
    for case_id in leaked:
        print(f"leaked   {case_id}")
    if args.presidio:
        print(presidio_comparison(cases, scores, redactor.ner))
    known = set(PATTERN_TYPES) | set(NER_TYPES)
    below = [s.type for s in scores if s.type.split("/")[0] in known and min(s.precision, s.recall) < args.min]
    if below:
        print(f"below {args.min}: {', '.join(below)}", file=sys.stderr)
    return 1 if below or leaked else 0


if __name__ == "__main__":
    sys.exit(main())
