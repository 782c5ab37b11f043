"""Redaction over the HTTP door: a scripted model writes PII across many tokens (see
tests/appliance/scripted_model.py); no chunk carries any part of it."""

import openai
import pytest

from tests.appliance.scripted_model import CARD, EMAIL, script_model

TEXT = f"Sure! Write to {EMAIL}, pay with card {CARD}. Thanks."
REDACTED = "Sure! Write to [EMAIL_ADDRESS], pay with card [CREDIT_CARD]. Thanks."
PARTS = ("alice", "smith", "example", "@", "4111", "1111")


@pytest.fixture(scope="module")
def redacting(redacting_daemon):
    with openai.OpenAI(base_url=f"http://{redacting_daemon.daemon.http_address}/v1", api_key="unused",
                       max_retries=0, timeout=60) as client:
        yield redacting_daemon, client


def test_a_streamed_email_split_across_chunks_never_reaches_the_client(redacting, models_dir):
    running, client = redacting
    _, _, length = script_model(running, models_dir, TEXT)
    assert length > 25  # the values are spread over many tokens
    chunks = list(client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Hello"}], max_tokens=length, stream=True, temperature=0,
        logprobs=True, extra_body={"ignore_eos": True, "redaction": {"output": "redact"}}))
    texts = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(texts) == REDACTED
    assert len([t for t in texts if t]) >= 2  # really streamed, not held to the end
    assert not any(part in text for text in texts for part in PARTS)
    assert all(c.choices[0].logprobs is None for c in chunks)  # tokens would decode back to the values
    assert chunks[-1].model_extra["redactions"] == [{"type": "CREDIT_CARD", "direction": "output", "count": 1},
                                                    {"type": "EMAIL_ADDRESS", "direction": "output", "count": 1}]


def test_pseudonymised_prompt_restored_in_a_whole_response(redacting, models_dir):
    running, client = redacting
    runner, tokenizer, length = script_model(running, models_dir,
                                             "I will email [EMAIL_ADDRESS_1] today.")
    whole = client.completions.create(
        model="llama", prompt=f"My email is {EMAIL}, please confirm.", max_tokens=length, temperature=0,
        extra_body={"ignore_eos": True, "redaction": {"input": "pseudonymize", "output": "restore"}})
    assert EMAIL not in tokenizer.decode(runner.prompts[-1])
    assert whole.choices[0].text == f"I will email {EMAIL} today."
    assert whole.model_extra["redactions"] == [{"type": "EMAIL_ADDRESS", "direction": "input", "count": 1}]
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.completions.create(model="llama", prompt="hi", extra_body={"redaction": {"input": "off"}})
    assert info.value.body["message"].startswith("redaction.input")
