"""The labelled evaluation set, its generator, and the precision/recall command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from appliance.redact.detectors import PATTERN_TYPES
from appliance.redact.evaluate import evaluate
from tests.appliance.redact.conftest import EVAL_SET
from tests.appliance.redact.data import make_eval_set


def test_the_set_is_large_bilingual_and_has_hard_negatives(eval_cases):
    assert len(eval_cases) >= 300
    langs = {c["lang"] for c in eval_cases}
    assert langs == {"en", "zh"}
    negatives = {c["tags"][1] for c in eval_cases if "hard_negative" in c["tags"]}
    assert {"bad_luhn_card", "bad_cn_id", "bad_iban", "order_number", "tracking_number", "timestamp", "date",
            "version", "hash", "uuid", "wrong_length_phone", "price"} <= negatives
    labelled = {s["type"] for c in eval_cases for s in c["spans"]}
    assert labelled == set(PATTERN_TYPES)


def test_the_committed_set_is_what_the_generator_makes(tmp_path):
    out = tmp_path / "eval_set.jsonl"
    make_eval_set.main(out)
    assert out.read_bytes() == EVAL_SET.read_bytes()


def test_every_pattern_type_reaches_098_precision_and_recall(redactor, eval_cases):
    scores, misses = evaluate(eval_cases, redactor)
    by_type = {s.type: s for s in scores}
    for entity_type in PATTERN_TYPES:
        score = by_type[entity_type]
        assert score.precision >= 0.98 and score.recall >= 0.98, (score, [m for m in misses if m.type == entity_type])


@pytest.mark.parametrize("minimum, status", [("0.98", 0), ("1.01", 1)])
def test_the_command_prints_a_table_and_fails_below_the_threshold(minimum, status):
    done = subprocess.run([sys.executable, "-m", "appliance.redact.evaluate", str(EVAL_SET), "--min", minimum],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == status, done.stderr
    assert "precision" in done.stdout and "CN_RESIDENT_ID" in done.stdout
