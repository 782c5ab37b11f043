"""PII redaction: detectors, stream-safe redaction, reversible pseudonyms, audit records.

Public API (a contract; extend, never rename):

    from appliance.redact import Redactor, load_ner
    result = Redactor().redact(text)     # result.text; result.entities: .type .start .end .score
    names = Redactor(ner=load_ner(["zh", "en"])[0])   # also PERSON and LOCATION without triggers
    stream = Redactor().stream()         # stream.feed(chunk) -> str; stream.close() -> str

A request in the daemon, in order:

    vault = PseudonymVault()                                          # per request, in memory
    prompt = redactor.redact(prompt, operator="pseudonymize", vault=vault, audit=input_audit).text
    out = redactor.stream(audit=output_audit)                         # redact what the model writes
    restore = vault.restorer()                                        # only for keys that may see it
    for token_text in generation:
        send(restore.feed(out.feed(token_text)))
    send(restore.feed(out.close()) + restore.close())

Redact before restoring: placeholders are not PII, so they pass redaction untouched, and
restored originals are not redacted again. Each stage keeps its own streaming invariant, so the
chain does too (tests/appliance/redact/test_pipeline.py).
"""

from appliance.redact.audit import AuditCollector, AuditRecord, audit_record, keyed_hash
from appliance.redact.detector import Anchor, PatternDetector
from appliance.redact.detectors import PATTERN_TYPES, default_detectors
from appliance.redact.ner import NER_LANGUAGES, NerDetector, NerUnavailable, PresidioNerDetector, load_ner
from appliance.redact.operators import MaskOperator, Operator, PseudonymOperator, ReplaceOperator
from appliance.redact.redactor import RedactionResult, Redactor, RedactorSettings
from appliance.redact.spans import Entity, resolve_overlaps
from appliance.redact.stream import RedactionStream
from appliance.redact.vault import PseudonymVault, RestoreStream

__all__ = [
    "Anchor", "AuditCollector", "AuditRecord", "Entity", "MaskOperator", "NER_LANGUAGES", "NerDetector",
    "NerUnavailable", "Operator", "PATTERN_TYPES", "PatternDetector", "PresidioNerDetector", "PseudonymOperator",
    "PseudonymVault", "RedactionResult", "RedactionStream", "Redactor", "RedactorSettings", "ReplaceOperator",
    "RestoreStream", "audit_record", "default_detectors", "keyed_hash", "load_ner", "resolve_overlaps",
]
