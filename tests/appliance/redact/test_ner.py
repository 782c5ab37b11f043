"""The NER hook: any backend with `detect(text) -> [Entity]` plugs in, stream-safe by segments."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings

from appliance.redact import Entity, NerDetector, NerUnavailable, PresidioNerDetector, Redactor
from appliance.redact.ner import segment_end
from tests.appliance.redact.strategies import chunked


class CapitalisedPairs:
    """A stand-in model: a capitalised first name and surname from a list are a PERSON, 'Paris' a LOCATION."""

    entity_types = ("PERSON", "LOCATION")
    max_chars = 64

    def detect(self, text: str) -> list[Entity]:
        found = [Entity("PERSON", m.start(), m.end(), 0.6) for m in re.finditer(r"(?:Maria|John|Emily) [A-Z][a-z]+", text)]
        found += [Entity("LOCATION", m.start(), m.end(), 0.7) for m in re.finditer("Paris", text)]
        found.append(Entity("ORGANIZATION", 0, 1, 0.9))  # a type nobody asked for
        return found


@pytest.fixture(scope="module")
def with_ner() -> Redactor:
    return Redactor(ner=CapitalisedPairs())


def test_a_backend_satisfies_the_protocol():
    assert isinstance(CapitalisedPairs(), NerDetector)


def test_ner_entities_join_pattern_entities(with_ner):
    text = "Ask Maria Lopez in Paris. Mail maria@example.com."
    assert with_ner.redact(text).text == "Ask [PERSON] in [LOCATION]. Mail [EMAIL_ADDRESS]."


def test_segments_end_at_sentence_ends_or_the_cap():
    assert segment_end("Hi. There", 0, 9, final=False, max_chars=64) == 3
    assert segment_end("Hi there", 0, 8, final=False, max_chars=64) is None
    assert segment_end("Hi there", 0, 8, final=True, max_chars=64) == 8
    assert segment_end("x" * 100, 0, 100, final=False, max_chars=64) == 64


@settings(max_examples=80, deadline=None)
@given(case=chunked())
def test_the_stream_invariant_holds_with_a_backend(with_ner, case):
    text, chunks = case
    stream = with_ner.stream()
    text_out = "".join(stream.feed(c) for c in chunks) + stream.close()
    assert text_out == with_ner.redact(text).text


def test_presidio_backend_is_skipped_cleanly_when_absent():
    try:
        import presidio_analyzer  # noqa: F401
    except ImportError:
        with pytest.raises(NerUnavailable):
            PresidioNerDetector()
        pytest.skip("presidio-analyzer is not installed")
    detector = PresidioNerDetector(("PERSON",))
    assert any(e.type == "PERSON" for e in detector.detect("My colleague Maria Lopez called."))
