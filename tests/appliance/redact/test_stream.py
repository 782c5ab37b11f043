"""The streaming invariant: any split of a text into chunks redacts exactly like the whole text."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.redact import Redactor
from appliance.redact.vault import PLACEHOLDER
from tests.appliance.redact.conftest import most_held_back
from tests.appliance.redact.strategies import chunked, texts

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def run(stream, chunks) -> str:
    return "".join(stream.feed(chunk) for chunk in chunks) + stream.close()


@SETTINGS
@given(case=chunked())
def test_any_split_into_str_chunks_matches_the_whole_text(redactor, case):
    text, chunks = case
    stream = redactor.stream()
    assert run(stream, chunks) == redactor.redact(text).text
    assert stream.entities == list(redactor.redact(text).entities)


@SETTINGS
@given(case=chunked(as_bytes=True))
def test_utf8_chunks_split_inside_characters_match_the_whole_text(redactor, case):
    text, chunks = case
    assert run(redactor.stream(), chunks) == redactor.redact(text).text


@settings(max_examples=120, deadline=None)
@given(case=chunked(), operator=st.sampled_from(["mask", "pseudonymize"]))
def test_every_operator_keeps_the_invariant(redactor, case, operator):
    text, chunks = case
    whole = redactor.redact(text, operator=operator)
    stream = redactor.stream(operator=operator)
    assert run(stream, chunks) == whole.text
    if operator == "pseudonymize":
        assert stream.vault.restore(whole.text) == whole.vault.restore(whole.text)
        # Exact round trip, unless the input holds a literal placeholder (restored too) or one value
        # spelled two ways (one placeholder, restored to the first spelling).
        spellings = {}
        for entity in whole.entities:
            key = whole.vault.placeholder(entity.type, text[entity.start:entity.end])
            spellings.setdefault(key, set()).add(text[entity.start:entity.end])
        if not PLACEHOLDER.search(text) and all(len(v) == 1 for v in spellings.values()):
            assert whole.vault.restore(whole.text) == text


@settings(max_examples=60, deadline=None)
@given(text=texts)
def test_one_character_at_a_time_matches_the_whole_text(redactor, text):
    assert run(redactor.stream(), list(text)) == redactor.redact(text).text


def test_prose_passes_straight_through(redactor):
    stream = redactor.stream()
    assert stream.feed("Hello there, how are you? ") == "Hello there, how are you? "
    assert stream.feed("你好，我的订单还没到。") == "你好，我的订单还没到。"
    assert stream.held_back == 0


def test_a_word_is_held_only_while_it_could_become_an_email(redactor):
    stream = redactor.stream()
    assert stream.feed("write to john") == "write to "
    assert stream.feed(".doe@exam") == ""
    assert stream.feed("ple.com today") == "[EMAIL_ADDRESS] "
    assert stream.close() == "today"


def test_digits_are_held_until_the_number_ends(redactor):
    stream = redactor.stream()
    assert stream.feed("电话138") == "电话"
    assert stream.feed(" 0013 8000") == ""
    assert stream.feed("，谢谢") == "[PHONE_NUMBER]，谢谢"


def test_a_private_key_is_held_until_its_end_line(redactor):
    stream = redactor.stream()
    assert stream.feed("key:\n-----BEGIN RSA PRIVATE KEY-----\n") == "key:\n"
    assert stream.feed("MIIBOgIBAAJBAKj34GkxFhD9\n" * 20) == ""
    assert stream.feed("-----END RSA PRIVATE KEY-----\nok") == "[SECRET]\n"  # "ok" may become an email
    assert stream.close() == "ok"


def test_hold_back_never_exceeds_the_bound_on_ordinary_text(redactor):
    text = "Mail lucy.wang@example.com or call +86 138 0013 8000. 我叫王芳，卡号6222 0212 3456 7894。" * 5
    most = most_held_back(redactor.stream(), text, 3)
    assert most <= redactor.max_holdback
    assert most <= 40  # a few tokens, not the whole bound


def test_a_character_cut_short_at_the_end_becomes_a_replacement_character(redactor):
    stream = redactor.stream()
    assert stream.feed(b"mail bob@example.org \xc3") == "mail [EMAIL_ADDRESS] "
    assert stream.close() == "\ufffd"


def test_bytes_and_str_may_not_mix_inside_a_character(redactor):
    stream = redactor.stream()
    stream.feed("电".encode()[:2])
    with pytest.raises(ValueError):
        stream.feed("话")


def test_feeding_after_close_is_an_error(redactor):
    stream = redactor.stream()
    stream.close()
    assert stream.close() == ""
    with pytest.raises(RuntimeError):
        stream.feed("more")
    with pytest.raises(RuntimeError):
        stream.close("more")


@settings(max_examples=60, deadline=None)
@given(case=chunked())
def test_a_last_chunk_given_to_close_is_redacted_as_if_fed(redactor, case):
    text, chunks = case
    stream = redactor.stream()
    head = "".join(stream.feed(chunk) for chunk in chunks[:-1])
    assert head + stream.close(chunks[-1] if chunks else "") == redactor.redact(text).text


def test_min_score_applies_to_streams_as_to_whole_texts():
    from appliance.redact import RedactorSettings

    strict = Redactor(RedactorSettings(min_score=0.8))
    text = "call 138 0013 8000 or mail a.b@example.com"
    stream = strict.stream()
    assert run(stream, [text[:9], text[9:]]) == strict.redact(text).text == "call 138 0013 8000 or mail [EMAIL_ADDRESS]"


ISSUE_12_CASES = [
    ("write to Renée.Dupont@exemple.fr or müller@example.de, cc o'brien@example.com.",
     "write to [EMAIL_ADDRESS] or [EMAIL_ADDRESS], cc [EMAIL_ADDRESS]."),
    ("请联系josé@ejemplo.es谢谢，或者user@münchen.de。", "请联系[EMAIL_ADDRESS]谢谢，或者[EMAIL_ADDRESS]。"),
    ("https://example.com/u?email=bob@example.com&x=1", "https://example.com/u?email=[EMAIL_ADDRESS]&x=1"),
    ("身份证号31011519850612123X，SKU-4111111111111111-RED，invoice 13800138000，发票号13800138000",
     "身份证号[CN_RESIDENT_ID]，SKU-4111111111111111-RED，invoice 13800138000，发票号13800138000"),
    ("call +1 415 555 0100 ext. 1234 or +1 415 555 0100 x1234, 电话13800138000转1234，Tel 021 6241 3848 (ext. 12)",
     "call [PHONE_NUMBER] or [PHONE_NUMBER], 电话[PHONE_NUMBER]，Tel [PHONE_NUMBER]"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nAWS_SECRET_ACCESS_KEY=" + "x" * 40,
     "aws_secret_access_key = [SECRET]\nAWS_SECRET_ACCESS_KEY=" + "x" * 40),
]


@pytest.mark.parametrize("text, redacted", ISSUE_12_CASES)
def test_every_two_and_three_way_split_of_the_issue_12_cases_matches_the_whole_text(redactor, text, redacted):
    assert redactor.redact(text).text == redacted
    for i in range(len(text) + 1):
        assert run(redactor.stream(), [text[:i], text[i:]]) == redacted, i
    for i in range(0, len(text) + 1, 3):
        for j in range(i, len(text) + 1, 5):
            assert run(redactor.stream(), [text[:i], text[i:j], text[j:]]) == redacted, (i, j)
    assert run(redactor.stream(), list(text)) == redacted


def test_an_extension_is_held_until_it_ends(redactor):
    stream = redactor.stream()
    assert stream.feed("call +1 415 555 0100") == "call "
    assert stream.feed(" ext. 12") == ""
    assert stream.feed("34 today") == "[PHONE_NUMBER] "
    assert stream.close() == "today"


def test_labels_just_before_a_number_survive_the_buffer_being_trimmed(redactor):
    # The stream drops consumed text every 2048 characters but keeps what lookbehinds read:
    # the document label before a number, and the letter before the label ("border" is no label).
    text = "".join(f"{'x' * (100 + i)} border 13800138000 confirmation number : 13800138000 订单号：13912345678 "
                   for i in range(40))
    whole = redactor.redact(text).text
    assert whole.count("[PHONE_NUMBER]") == 40
    for size in (1, 3, 7):
        assert run(redactor.stream(), [text[i:i + size] for i in range(0, len(text), size)]) == whole
