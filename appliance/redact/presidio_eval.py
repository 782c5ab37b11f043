"""Presidio's analyzer with our NER in place of its spaCy model, for side-by-side evaluation.

Presidio finds PERSON and LOCATION through an NLP engine that runs a spaCy pipeline, and no spaCy
English or Chinese pipeline can be had offline with a provenance we can check. Its pattern
recognizers need no model, so here the analyzer gets an NLP engine that only tokenizes (spaCy's
blank English pipeline, which ships inside the spacy package: no download) and a recognizer
that runs our NER backends on the same segments the redactor uses. The comparison is then of
Presidio's pattern recognizers and overlap handling against ours, with the same names and
addresses. Presidio's recognizers are registered for English; as regular expressions they apply
to any text, so every case is analysed as "en". Only types both sides have are compared.

presidio-analyzer is optional (it pulls spaCy): nothing here is imported unless asked for.
"""

from __future__ import annotations

from appliance.redact.ner import NerDetector, scan_segments
from appliance.redact.spans import Entity

# Presidio's names for the types we also detect (the same spelling for all of them).
SHARED_TYPES = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN",
                "PERSON", "LOCATION")
MIN_SCORE = 0.5  # Presidio scores weak pattern matches (a bare 9-digit SSN) far lower


class PresidioUnavailable(RuntimeError):
    pass


def presidio_analyzer(ner: NerDetector | None):
    """An AnalyzerEngine with Presidio's predefined pattern recognizers and, when given, `ner`."""
    try:
        import spacy
        from presidio_analyzer import AnalyzerEngine, EntityRecognizer, RecognizerRegistry, RecognizerResult
        from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
    except ImportError as exc:
        raise PresidioUnavailable("presidio-analyzer is not installed") from exc

    class TokenizingEngine(NlpEngine):
        """Tokens only: the context enhancer's words around a match, no entities."""

        def __init__(self):
            self._nlp = spacy.blank("en")

        def load(self):
            pass

        def is_loaded(self):
            return True

        def process_text(self, text, language):
            doc = self._nlp(text)
            return NlpArtifacts(entities=[], tokens=doc, tokens_indices=[t.idx for t in doc],
                                lemmas=[t.text.lower() for t in doc], nlp_engine=self, language=language)

        def process_batch(self, texts, language, batch_size=1, n_process=1, **kwargs):
            return [(text, self.process_text(text, language)) for text in texts]

        def is_stopword(self, word, language):
            return self._nlp.vocab[word].is_stop

        def is_punct(self, word, language):
            return len(word) == 1 and not word.isalnum()

        def get_supported_entities(self):
            return []

        def get_supported_languages(self):
            return ["en"]

    class OurNer(EntityRecognizer):
        def load(self):
            pass

        def analyze(self, text, entities, nlp_artifacts=None):
            found, _ = scan_segments(ner, text, 0, len(text), final=True)
            return [RecognizerResult(e.type, e.start, e.end, e.score) for e in found if e.type in entities]

    engine = TokenizingEngine()
    registry = RecognizerRegistry(supported_languages=["en"])
    registry.load_predefined_recognizers(languages=["en"], nlp_engine=engine)
    for name in ("SpacyRecognizer", "StanzaRecognizer", "TransformersRecognizer"):
        registry.remove_recognizer(name)
    if ner is not None:
        registry.add_recognizer(OurNer(supported_entities=list(ner.entity_types), name="appliance_ner",
                                       supported_language="en"))
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])


class PresidioDetector:
    """`detect(text)` as the evaluation calls it, answered by Presidio's analyzer."""

    def __init__(self, ner: NerDetector | None):
        self._analyzer = presidio_analyzer(ner)

    def detect(self, text: str) -> list[Entity]:
        results = self._analyzer.analyze(text=text, language="en", entities=list(SHARED_TYPES),
                                         score_threshold=MIN_SCORE)
        return [Entity(r.entity_type, r.start, r.end, float(r.score)) for r in results]
