"""The labelled evaluation set, its generator, and the precision/recall command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from appliance.redact.detectors import PATTERN_TYPES
from appliance.redact.evaluate import evaluate, leaks, load_cases, redactor_with_ner
from appliance.redact.ner import NER_LANGUAGES
from tests.appliance.redact.conftest import EVAL_SET
from tests.appliance.redact.data import make_eval_set, make_names_set


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


NAMES_SET = EVAL_SET.with_name("names_set.jsonl")


def test_the_committed_names_set_is_what_its_generator_makes(tmp_path):
    out = tmp_path / "names_set.jsonl"
    make_names_set.main(out)
    assert out.read_bytes() == NAMES_SET.read_bytes()


@pytest.fixture(scope="module")
def with_ner():
    redactor = redactor_with_ner(NER_LANGUAGES)
    if redactor.ner is None or len(redactor.ner.backends) < len(NER_LANGUAGES):
        pytest.skip("NER backends not installed")
    return redactor


def test_names_and_addresses_reach_09_per_language_on_the_held_out_split(with_ner):
    cases = [case for case in load_cases(NAMES_SET) if case["split"] == "test"]
    scores, misses = evaluate(cases, with_ner, by_language=True)
    by_type = {s.type: s for s in scores}
    for key in ("PERSON", "PERSON/en", "PERSON/zh", "LOCATION", "LOCATION/en", "LOCATION/zh"):
        assert by_type[key].precision >= 0.9 and by_type[key].recall >= 0.9, (by_type[key], misses)


@pytest.mark.parametrize("split", ["dev", "test"])
def test_no_labelled_value_is_left_in_any_redacted_text(with_ner, split):
    cases = [case for case in load_cases(NAMES_SET) if case["split"] == split]
    assert leaks(cases, with_ner) == []


def test_ner_changes_nothing_on_the_structured_set(with_ner, eval_cases):
    scores, _ = evaluate(eval_cases, with_ner)
    assert all(s.precision == 1.0 and s.recall == 1.0 for s in scores), scores
    assert leaks(eval_cases, with_ner) == []


def test_the_command_reports_languages_and_leaks_without_texts():
    done = subprocess.run([sys.executable, "-m", "appliance.redact.evaluate", str(NAMES_SET), "--split", "dev"],
                          capture_output=True, text=True, timeout=120)
    assert "PERSON/zh" in done.stdout and "LOCATION/en" in done.stdout and "left in the redacted text" in done.stdout
    texts = [case["text"] for case in load_cases(NAMES_SET)]
    assert not any(case_text[:12] in done.stdout + done.stderr for case_text in texts)


def test_an_unknown_ner_language_is_a_usage_error():
    done = subprocess.run([sys.executable, "-m", "appliance.redact.evaluate", str(NAMES_SET), "--ner", "fr"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown language 'fr'" in done.stderr and "Traceback" not in done.stderr


HAVE_PRESIDIO = importlib.util.find_spec("presidio_analyzer") is not None


def _evaluate_with_presidio() -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "appliance.redact.evaluate", str(NAMES_SET), "--split", "dev",
                           "--presidio"], capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
    return done


@pytest.mark.skipif(HAVE_PRESIDIO, reason="presidio-analyzer is installed")
def test_the_presidio_comparison_says_in_one_line_why_it_is_skipped():
    assert "presidio comparison skipped: presidio-analyzer is not installed" in _evaluate_with_presidio().stdout


@pytest.mark.skipif(not HAVE_PRESIDIO, reason="presidio-analyzer is not installed")
def test_the_presidio_comparison_gives_both_figures_per_type_and_language():
    out = _evaluate_with_presidio().stdout
    assert "presidio P" in out and all(f"\n{key} " in out for key in ("PERSON/zh", "LOCATION/en"))
