"""The public contract: Redactor().redact(text) -> .text, .entities; operators; config."""

from __future__ import annotations

import pytest

from appliance.redact import Entity, PseudonymVault, Redactor, RedactorSettings, ReplaceOperator

TEXT = "😀 Mail lucy.wang@example.com, 电话：１３８００１３８０００, card 4111 1111 1111 1111."


def test_the_api_contract(redactor):
    result = redactor.redact(TEXT)
    assert result.text == "😀 Mail [EMAIL_ADDRESS], 电话：[PHONE_NUMBER], card [CREDIT_CARD]."
    assert [(e.type, TEXT[e.start:e.end]) for e in result.entities] == [
        ("EMAIL_ADDRESS", "lucy.wang@example.com"), ("PHONE_NUMBER", "１３８００１３８０００"),
        ("CREDIT_CARD", "4111 1111 1111 1111")]
    assert all(isinstance(e, Entity) and 0 < e.score <= 1 for e in result.entities)


def test_offsets_are_code_points_into_the_input(redactor):
    text = "👨‍👩‍👧 我叫王芳 🇨🇳 a@example.com"
    spans = [(e.start, e.end) for e in redactor.redact(text).entities]
    assert [text[a:b] for a, b in spans] == ["王芳", "a@example.com"]


def test_entities_never_carry_values(redactor):
    entity = redactor.redact(TEXT).entities[0]
    assert "lucy" not in repr(entity) and "lucy" not in str(entity.to_dict())


def test_text_without_pii_is_returned_unchanged(redactor):
    text = "Order 20240315001 shipped on 2024-03-15 12:30, v1.2.3, $1,299.99, 谢谢！"
    result = redactor.redact(text)
    assert result.text == text and result.entities == ()


def test_mask_keeps_the_last_four_of_numbers_and_hides_the_rest(redactor):
    masked = redactor.redact("card 4111-1111-1111-1111, mail lucy@example.com", operator="mask").text
    assert masked == "card ****-****-****-1111, mail ****@*******.***"


def test_pseudonyms_are_stable_per_value_and_restorable(redactor):
    text = "a@example.com wrote to b@example.com, then A@example.com again; call 138 0013 8000 or 13800138000"
    result = redactor.redact(text, operator="pseudonymize")
    assert result.text == ("[EMAIL_ADDRESS_1] wrote to [EMAIL_ADDRESS_2], then [EMAIL_ADDRESS_1] again; "
                           "call [PHONE_NUMBER_1] or [PHONE_NUMBER_1]")
    assert result.vault.restore("Reply to [EMAIL_ADDRESS_2] at [PHONE_NUMBER_1]") == "Reply to b@example.com at 138 0013 8000"


def test_a_vault_passed_in_spans_calls(redactor):
    vault = PseudonymVault()
    redactor.redact("a@example.com", operator="pseudonymize", vault=vault)
    again = redactor.redact("b@example.com and a@example.com", operator="pseudonymize", vault=vault)
    assert again.text == "[EMAIL_ADDRESS_2] and [EMAIL_ADDRESS_1]" and again.vault is vault


def test_an_operator_object_may_be_passed(redactor):
    class Tag(ReplaceOperator):
        def render(self, entity_type, value):
            return f"<{entity_type.lower()}>"

    assert redactor.redact("a@example.com", operator=Tag()).text == "<email_address>"


def test_config_chooses_types_and_operator():
    only_email = Redactor(RedactorSettings(entity_types=("EMAIL_ADDRESS",), operator="mask"))
    assert only_email.redact("a@example.com 13800138000").text == "*@*******.*** 13800138000"


@pytest.mark.parametrize("field, value", [("operator", "shred"), ("entity_types", ("SSN",)), ("min_score", 2.0),
                                          ("mask_char", "**"), ("mask_keep_last", -1)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RedactorSettings(**{field: value})


def test_max_holdback_is_the_longest_detector_reach(redactor):
    assert redactor.max_holdback == max(d.reach for d in redactor.detectors)
