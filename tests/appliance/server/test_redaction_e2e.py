"""The redaction stage in the daemon, end to end over gRPC, with a model scripted to write PII
(tests/appliance/scripted_model.py)."""

import logging

import grpc
import pytest

from appliance.client import ApplianceClient
from tests.appliance.scripted_model import CARD, CN_ID, EMAIL, RAW_VALUES, script_model

def test_streamed_pii_never_reaches_the_client(redacting_daemon, models_dir):
    text = f"Sure! Write to {EMAIL}, pay with card {CARD}, 身份证号{CN_ID}。Thanks."
    _, tokenizer, length = script_model(redacting_daemon, models_dir, text)
    assert length > 30  # the values are spread over many tokens
    with ApplianceClient(redacting_daemon.target) as client:
        chunks = list(client.generate("llama", "Hello", max_tokens=length, ignore_eos=True,
                                      redaction=("", "redact")))
    streamed = "".join(c.text for c in chunks)
    assert streamed == "Sure! Write to [EMAIL_ADDRESS], pay with card [CREDIT_CARD], 身份证号[CN_RESIDENT_ID]。Thanks."
    assert not any(value in c.text for c in chunks for value in RAW_VALUES)
    assert all(not c.token_ids for c in chunks)  # ids would decode back to the raw text
    assert chunks[-1].redactions == {("output", "EMAIL_ADDRESS"): 1, ("output", "CREDIT_CARD"): 1,
                                     ("output", "CN_RESIDENT_ID"): 1}


def test_pseudonymised_prompt_and_restored_output(redacting_daemon, models_dir):
    # The model only ever sees the placeholder; the caller, allowed to restore, gets its own value
    # back, while PII the model invents itself stays redacted.
    text = f"I will email [EMAIL_ADDRESS_1] today; also try {CARD}."
    runner, tokenizer, length = script_model(redacting_daemon, models_dir, text)
    with ApplianceClient(redacting_daemon.target) as client:
        chunks = list(client.generate("llama", f"My email is {EMAIL}, please confirm.", max_tokens=length,
                                      ignore_eos=True, redaction=("pseudonymize", "restore")))
    seen_by_model = tokenizer.decode(runner.prompts[-1])
    assert "[EMAIL_ADDRESS_1]" in seen_by_model and EMAIL not in seen_by_model
    assert "".join(c.text for c in chunks) == f"I will email {EMAIL} today; also try [CREDIT_CARD]."
    assert chunks[-1].redactions == {("input", "EMAIL_ADDRESS"): 1, ("output", "CREDIT_CARD"): 1}


def test_default_policies_apply_and_the_audit_log_has_no_values(redacting_daemon, models_dir, caplog):
    script_model(redacting_daemon, models_dir, f"Call me at +86 138 0013 8000 or {EMAIL}.")
    with caplog.at_level(logging.INFO, logger="appliance.audit"):
        with ApplianceClient(redacting_daemon.target) as client:
            chunks = list(client.generate("llama", f"Card {CARD} was charged twice", max_tokens=30,
                                          ignore_eos=True))
    streamed = "".join(c.text for c in chunks)
    assert "[PHONE_NUMBER]" in streamed and "[EMAIL_ADDRESS]" in streamed
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.audit"]
    assert any('"direction": "input"' in line and "CREDIT_CARD" in line for line in lines)
    assert any('"direction": "output"' in line and "PHONE_NUMBER" in line for line in lines)
    for line in lines:
        assert not any(value in line for value in (*RAW_VALUES, "138 0013 8000", "13800138000"))


def test_a_policy_the_server_does_not_allow_is_permission_denied(redacting_daemon):
    with ApplianceClient(redacting_daemon.target) as client:
        with pytest.raises(grpc.RpcError) as info:
            list(client.generate("llama", "hi", max_tokens=2, redaction=("off", "")))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("redaction.input")


def test_redact_rpc_returns_text_and_entities(redacting_daemon):
    text = f"邮箱 {EMAIL}，卡号{CARD.replace(' ', '')}"
    with ApplianceClient(redacting_daemon.target) as client:
        result = client.redact(text)
        masked = client.redact(text, operator="mask")
    assert result.text == "邮箱 [EMAIL_ADDRESS]，卡号[CREDIT_CARD]"
    assert [(t, text[s:e]) for t, s, e, _ in result.entities] == [("EMAIL_ADDRESS", EMAIL),
                                                                  ("CREDIT_CARD", CARD.replace(" ", ""))]
    assert masked.text.endswith("1111") and "4111" not in masked.text
