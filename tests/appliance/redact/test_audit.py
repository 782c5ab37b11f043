import json

import pytest

from appliance.redact import AuditCollector, audit_record, keyed_hash

KEY = b"server-secret"
TEXT = "mail lucy@example.com or LUCY@example.com, call 138 0013 8000 or 13800138000, card 4111111111111111"


def test_counts_and_keyed_hashes_without_values(redactor):
    result = redactor.redact(TEXT)
    record = audit_record(TEXT, result.entities, KEY, request_id="req-1", direction="input")
    assert record.counts == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 2, "CREDIT_CARD": 1} and record.total == 5
    emails, phones = record.hashes["EMAIL_ADDRESS"], record.hashes["PHONE_NUMBER"]
    assert emails[0] == emails[1] and phones[0] == phones[1]  # one person, spelled two ways
    dumped = json.dumps(record.to_dict()) + repr(record)
    for value in ("lucy", "138", "4111"):
        assert value not in dumped.lower().replace(emails[0], "").replace(phones[0], "").replace(
            record.hashes["CREDIT_CARD"][0], "")


def test_hashes_depend_on_the_key_and_the_type():
    assert keyed_hash(KEY, "EMAIL_ADDRESS", "a@b.com") != keyed_hash(b"other", "EMAIL_ADDRESS", "a@b.com")
    assert keyed_hash(KEY, "EMAIL_ADDRESS", "a@b.com") != keyed_hash(KEY, "PERSON", "a@b.com")
    assert len(keyed_hash(KEY, "EMAIL_ADDRESS", "a@b.com")) == 64


def test_a_collector_records_what_a_stream_emitted(redactor):
    collector = AuditCollector(KEY)
    stream = redactor.stream(audit=collector)
    for i in range(0, len(TEXT), 5):
        stream.feed(TEXT[i:i + 5])
    stream.close()
    assert collector.record("req-2", "output") == audit_record(TEXT, redactor.detect(TEXT), KEY, request_id="req-2",
                                                               direction="output")


def test_an_empty_key_is_refused():
    with pytest.raises(ValueError):
        AuditCollector(b"")
