"""Bounds and open tails derived from the detectors' own regexes."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.redact.detectors import default_detectors
from appliance.redact.regex_analysis import bounds, open_tail, serialize

DETECTORS = default_detectors()


def test_bounds_of_a_simple_pattern():
    b = bounds(re.compile(r"(?<![0-9])[0-9]{3}(?:-[0-9]{2})?(?![0-9]|\.[0-9])"))
    assert (b.min_length, b.max_length, b.lookbehind, b.lookahead, b.reach) == (3, 6, 1, 2, 8)


@pytest.mark.parametrize("pattern", [r"[0-9]+", r"a*b", r"^abc", r"(a)\1", r"x?"])
def test_unbounded_non_local_or_empty_patterns_are_refused(pattern):
    with pytest.raises(ValueError):
        bounds(re.compile(pattern))


def test_open_tail_marks_prefixes_of_possible_matches():
    tail = open_tail(re.compile(r"(?<![0-9])[0-9]{3}-[0-9]{4}(?![0-9])"))
    assert tail.search("call 555-12").start() == 5  # may still become 555-1234
    assert tail.search("call 555-1234").start() == 5  # complete, but a digit could still follow
    assert tail.search("call 555-1234 ") is None or tail.search("call 555-1234 ").start() == 14
    assert tail.search("call 555x").start() == 9  # nothing open before the end


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_serialised_patterns_match_like_the_originals(detector, eval_cases):
    copy = re.compile(serialize(detector.pattern), detector.pattern.flags & ~re.VERBOSE)
    for case in eval_cases:
        assert [m.span() for m in copy.finditer(case["text"])] == [m.span() for m in detector.pattern.finditer(case["text"])]


ALPHABET = st.sampled_from(list("0123456789 -.+()@:_=\nabcXAEGkrsp名叫张我码") +
                           ["sk-", "AKIA", "ame is ", "-----BEGIN PRIVATE KEY-----", "-----END ", "Bearer ", "DE89",
                            "password: ", "@ex.com", "fe80::", "138", "é", "'", "@münchen.de", "谢", "ext. ", "转",
                            "，分机", "invoice ", "发票号", "SKU-", "aws_secret_access_key=", "wJalrXUtnFEMI/K7MDENG/"])


@settings(max_examples=120, deadline=None)
@given(pieces=st.lists(ALPHABET, max_size=14))
def test_an_attempt_not_marked_open_is_already_decided(pieces):
    """The property the stream relies on: where open_tail does not match at t, the attempt at t
    gives the same result on the text so far as on any longer text."""
    text = "".join(pieces)
    for detector in DETECTORS:
        for end in range(len(text) + 1):
            prefix = text[:end]
            for start in range(end):
                if detector.open_tail.match(prefix, start):
                    continue
                on_prefix = detector.pattern.match(prefix, start)
                on_text = detector.pattern.match(text, start)
                assert (on_prefix and on_prefix.span()) == (on_text and on_text.span()), (detector.name, start, end)


def test_a_lookbehind_inside_a_lookbehind_adds_to_how_far_back_a_pattern_peeks():
    # Whether "inv" starts a word is decided by the character before it: 4 + 1 characters back.
    b = bounds(re.compile(r"[0-9](?<!(?<![A-Za-z])inv[0-9])[0-9]{2}"))
    assert (b.lookbehind, b.max_length) == (5, 3)


@settings(max_examples=80, deadline=None)
@given(pieces=st.lists(ALPHABET, max_size=14), padding=st.sampled_from(["", " ", "0", "a", "-"]))
def test_an_attempt_reads_nothing_beyond_its_reach(pieces, padding):
    """What `reach` promises the scanners: a match attempted at t decides the same on the text cut
    at t + reach as on the whole text (the stream holds back no more than that)."""
    text = "".join(pieces) + padding * 8
    for detector in DETECTORS:
        assert detector.bounds.min_length >= 1
        for start in range(len(text)):
            whole = detector.pattern.match(text, start)
            cut = detector.pattern.match(text, start, start + detector.reach)
            assert (whole and whole.span()) == (cut and cut.span()), (detector.name, start)


@pytest.mark.parametrize("pattern,alphabet", [
    (r"(?<![0-9])[0-9]{3}(?:-[0-9]{2})?(?![0-9]|\.[0-9])", "1-."),
    (r"[a-c]{2,4}(?!x)", "ax"),
])
def test_reach_is_the_shortest_cut_that_decides_every_attempt(pattern, alphabet):
    """Over every text of the alphabet one longer than the reach: cut at the reach, an attempt
    decides as on the whole text; cut one shorter, some attempt decides otherwise."""
    compiled = re.compile(pattern)
    reach = bounds(compiled).reach
    texts = ["".join(t) for t in itertools.product(alphabet, repeat=reach + 1)]

    def decides(cut: int) -> bool:
        return all(((m := compiled.match(text)) and m.span()) == ((c := compiled.match(text, 0, cut)) and c.span())
                   for text in texts)

    assert decides(reach) and not decides(reach - 1)
