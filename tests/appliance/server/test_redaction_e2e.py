"""The redaction stage in the daemon, end to end over gRPC.

A random model never writes an email on request, so the model is replaced by a scripted runner
that "generates" a fixed text through the real tokenizer, engine, detokenizer and service: the
PII arrives split across many tokens, exactly as a real model's would.
"""

import logging
import shutil

import grpc
import numpy as np
import pytest
from tokenizers import Tokenizer

from appliance.client import ApplianceClient
from appliance.engine.engine import GenerationEngine
from appliance.engine.scheduler import SchedulerConfig
from appliance.registry import ReplicaSet
from appliance.server.config import load_config
from tests.conftest import InProcessDaemon, free_port

EMAIL, CARD, CN_ID = "alice.smith@example.com", "4111 1111 1111 1111", "11010519491231002X"
RAW_VALUES = (EMAIL, CARD, CN_ID, "4111111111111111")


class ScriptedRunner:
    """Produces `script` token by token for every row, whatever the prompt; records the prompts."""

    def __init__(self, script, vocab, max_batch=4):
        self.script, self.vocab, self.max_batch, self.context_length = script, vocab, max_batch, 4096
        self.prompt_len, self.prompts = {}, []

    def _onehot(self, index):
        logits = np.zeros(self.vocab, np.float32)
        logits[self.script[min(index, len(self.script) - 1)]] = 1.0
        return logits

    def prefill(self, slot, token_ids, start):
        self.prompt_len[slot] = start + len(token_ids)
        self.prompts.append(list(token_ids))
        return self._onehot(0)

    def decode(self, token_ids, lengths):
        return np.stack([self._onehot(int(length) - self.prompt_len[row] + 1) for row, length in enumerate(lengths)])

    def move(self, src, dst, length):
        self.prompt_len[dst] = self.prompt_len[src]

    def release(self, slot):
        pass


@pytest.fixture(scope="module")
def daemon(models_dir, tmp_path_factory):
    served = tmp_path_factory.mktemp("redaction-models")
    shutil.copytree(models_dir / "llama", served / "llama")
    config = load_config(None, {
        "server": {"models": served, "listen": f"127.0.0.1:{free_port()}"},
        "redaction": {"input": "pseudonymize", "output": "redact", "allowed_input": ("redact", "pseudonymize"),
                      "allowed_output": ("redact", "restore")},
    })
    with InProcessDaemon(config) as running:
        yield running.daemon, running.target


def script_model(daemon_and_target, models_dir, text):
    daemon, _ = daemon_and_target
    model = daemon.registry.get("llama")
    tokenizer = Tokenizer.from_file(str(models_dir / "llama" / "tokenizer.json"))
    script = tokenizer.encode(text).ids
    runner = ScriptedRunner(script, tokenizer.get_vocab_size())
    model.engine.close()
    model.engine = ReplicaSet([GenerationEngine(runner, tokenizer, [], SchedulerConfig(max_batch=4))])
    return runner, tokenizer, len(script)


def test_streamed_pii_never_reaches_the_client(daemon, models_dir):
    text = f"Sure! Write to {EMAIL}, pay with card {CARD}, 身份证号{CN_ID}。Thanks."
    _, tokenizer, length = script_model(daemon, models_dir, text)
    assert length > 30  # the values are spread over many tokens
    with ApplianceClient(daemon[1]) as client:
        chunks = list(client.generate("llama", "Hello", max_tokens=length, ignore_eos=True,
                                      redaction=("", "redact")))
    streamed = "".join(c.text for c in chunks)
    assert streamed == "Sure! Write to [EMAIL_ADDRESS], pay with card [CREDIT_CARD], 身份证号[CN_RESIDENT_ID]。Thanks."
    assert not any(value in c.text for c in chunks for value in RAW_VALUES)
    assert all(not c.token_ids for c in chunks)  # ids would decode back to the raw text
    assert chunks[-1].redactions == {("output", "EMAIL_ADDRESS"): 1, ("output", "CREDIT_CARD"): 1,
                                     ("output", "CN_RESIDENT_ID"): 1}


def test_pseudonymised_prompt_and_restored_output(daemon, models_dir):
    # The model only ever sees the placeholder; the caller, allowed to restore, gets its own value
    # back, while PII the model invents itself stays redacted.
    text = f"I will email [EMAIL_ADDRESS_1] today; also try {CARD}."
    runner, tokenizer, length = script_model(daemon, models_dir, text)
    with ApplianceClient(daemon[1]) as client:
        chunks = list(client.generate("llama", f"My email is {EMAIL}, please confirm.", max_tokens=length,
                                      ignore_eos=True, redaction=("pseudonymize", "restore")))
    seen_by_model = tokenizer.decode(runner.prompts[-1])
    assert "[EMAIL_ADDRESS_1]" in seen_by_model and EMAIL not in seen_by_model
    assert "".join(c.text for c in chunks) == f"I will email {EMAIL} today; also try [CREDIT_CARD]."
    assert chunks[-1].redactions == {("input", "EMAIL_ADDRESS"): 1, ("output", "CREDIT_CARD"): 1}


def test_default_policies_apply_and_the_audit_log_has_no_values(daemon, models_dir, caplog):
    script_model(daemon, models_dir, f"Call me at +86 138 0013 8000 or {EMAIL}.")
    with caplog.at_level(logging.INFO, logger="appliance.audit"):
        with ApplianceClient(daemon[1]) as client:
            chunks = list(client.generate("llama", f"Card {CARD} was charged twice", max_tokens=30,
                                          ignore_eos=True))
    streamed = "".join(c.text for c in chunks)
    assert "[PHONE_NUMBER]" in streamed and "[EMAIL_ADDRESS]" in streamed
    lines = [r.getMessage() for r in caplog.records if r.name == "appliance.audit"]
    assert any('"direction": "input"' in line and "CREDIT_CARD" in line for line in lines)
    assert any('"direction": "output"' in line and "PHONE_NUMBER" in line for line in lines)
    for line in lines:
        assert not any(value in line for value in (*RAW_VALUES, "138 0013 8000", "13800138000"))


def test_a_policy_the_server_does_not_allow_is_permission_denied(daemon):
    with ApplianceClient(daemon[1]) as client:
        with pytest.raises(grpc.RpcError) as info:
            list(client.generate("llama", "hi", max_tokens=2, redaction=("off", "")))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details().startswith("redaction.input")


def test_redact_rpc_returns_text_and_entities(daemon):
    text = f"邮箱 {EMAIL}，卡号{CARD.replace(' ', '')}"
    with ApplianceClient(daemon[1]) as client:
        result = client.redact(text)
        masked = client.redact(text, operator="mask")
    assert result.text == "邮箱 [EMAIL_ADDRESS]，卡号[CREDIT_CARD]"
    assert [(t, text[s:e]) for t, s, e, _ in result.entities] == [("EMAIL_ADDRESS", EMAIL),
                                                                  ("CREDIT_CARD", CARD.replace(" ", ""))]
    assert masked.text.endswith("1111") and "4111" not in masked.text
