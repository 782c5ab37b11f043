"""Anchored whole-text scanning finds exactly what a plain finditer finds."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.redact.detector import AnchorIndex
from appliance.redact.detectors import default_detectors
from appliance.redact.normalize import normalize
from tests.appliance.redact.strategies import texts

DETECTORS = default_detectors()


def plain(detector, text):
    return [m.span() for m in detector.pattern.finditer(text)]


def anchored(detector, text, index=None):
    return [m.span() for m in detector.find(text, index)]


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_anchored_scan_equals_finditer_on_the_evaluation_set(detector, eval_cases):
    text = normalize("\n".join(case["text"] for case in eval_cases))
    assert anchored(detector, text) == plain(detector, text)
    for case in eval_cases:
        norm = normalize(case["text"])
        assert anchored(detector, norm) == plain(detector, norm)


@settings(max_examples=200, deadline=None)
@given(text=texts)
def test_anchored_scan_equals_finditer_on_random_text(text):
    norm = normalize(text)
    index = AnchorIndex(norm)
    for detector in DETECTORS:
        assert anchored(detector, norm, index) == plain(detector, norm), detector.name


@settings(max_examples=200, deadline=None)
@given(text=texts, data=st.data())
def test_anchored_scan_from_a_position_equals_finditer_from_it(text, data):
    # A stream's close scans the rest from each detector's position, lookbehinds reading before it.
    norm = normalize(text)
    start = data.draw(st.integers(0, len(norm)))
    index = AnchorIndex(norm)
    for detector in DETECTORS:
        found = [m.span() for m in detector.find(norm, index, start)]
        assert found == [m.span() for m in detector.pattern.finditer(norm, start)], detector.name
