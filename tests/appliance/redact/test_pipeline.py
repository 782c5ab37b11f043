"""The daemon's use, end to end at library level: pseudonymise the prompt, then stream the
generation through output redaction and (for keys allowed to see them) the vault's restore."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum import luhn
from stdnum.cn import ric

from appliance.redact import PseudonymVault
from tests.appliance.redact.strategies import split_at

PROMPT_ID = "11010519491231002" + ric.calc_check_digit("11010519491231002" + "0")
NEW_ID = "44030519900307123" + ric.calc_check_digit("44030519900307123" + "0")
CARD = "6222021234567890" + luhn.calc_check_digit("6222021234567890")
PROMPT = f"我叫张伟，邮箱 zhang.wei@example.com，身份证{PROMPT_ID}，帮我写封信。"


def generation(safe_prompt_placeholders: dict[str, str]) -> str:
    """What a model might write back: placeholders it saw, and PII of its own."""
    person, email, cn_id = (safe_prompt_placeholders[t] for t in ("PERSON", "EMAIL_ADDRESS", "CN_RESIDENT_ID"))
    return (f"{person}您好，回复将发到{email}（证件{cn_id}）。请用卡{CARD}付款，"
            f"或联系 li.na@example.org，她的身份证{NEW_ID}。")


def serve(redactor, tokens, may_restore: bool, vault: PseudonymVault) -> str:
    """One hold-back stage after another: redact what the model wrote, then restore placeholders."""
    redacting = redactor.stream()
    restoring = vault.restorer() if may_restore else None
    out = []
    for token in tokens + [None]:
        text = redacting.feed(token) if token is not None else redacting.close()
        if restoring is not None:
            text = restoring.feed(text) + (restoring.close() if token is None else "")
        out.append(text)
    return "".join(out)


@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 120), max_size=40), may_restore=st.booleans())
def test_a_client_never_receives_raw_values_unless_its_key_may_restore(redactor, cuts, may_restore):
    vault = PseudonymVault()
    safe = redactor.redact(PROMPT, operator="pseudonymize", vault=vault)
    for value in ("张伟", "zhang.wei@example.com", PROMPT_ID):
        assert value not in safe.text
    placeholders = {e.type: vault.placeholder(e.type, PROMPT[e.start:e.end]) for e in safe.entities}
    written = generation(placeholders)
    received = serve(redactor, split_at(written, cuts), may_restore, vault)
    for new_value in (CARD, "li.na@example.org", NEW_ID):
        assert new_value not in received
    if may_restore:
        assert received == (f"张伟您好，回复将发到zhang.wei@example.com（证件{PROMPT_ID}）。请用卡[CREDIT_CARD]付款，"
                            f"或联系 [EMAIL_ADDRESS]，她的身份证[CN_RESIDENT_ID]。")
    else:
        assert received == redactor.redact(written).text
        for value in ("张伟", "zhang.wei@example.com", PROMPT_ID):
            assert value not in received
