"""A daemon whose model writes a fixed text: the redaction tests' way to make PII appear.

A random model never writes an email on request, so the model is replaced by a scripted runner
that "generates" a fixed text through the real tokenizer, engine, detokenizer and service: the
PII arrives split across many tokens, exactly as a real model's would. The daemon itself is the
`redacting_daemon` fixture (tests/appliance/conftest.py), with both the gRPC and the HTTP door.
"""

import numpy as np
from tokenizers import Tokenizer

from appliance.engine.engine import GenerationEngine
from appliance.engine.scheduler import SchedulerConfig
from appliance.registry import ReplicaSet

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


def script_model(running, models_dir, text):
    """Makes the running daemon's llama write `text` to every request; returns the runner (which
    records the prompts it saw), the tokenizer and the text's length in tokens."""
    model = running.daemon.registry.get("llama")
    tokenizer = Tokenizer.from_file(str(models_dir / "llama" / "tokenizer.json"))
    script = tokenizer.encode(text).ids
    runner = ScriptedRunner(script, tokenizer.get_vocab_size())
    model.engine.close()
    model.engine = ReplicaSet([GenerationEngine(runner, tokenizer, [], SchedulerConfig(max_batch=4))])
    return runner, tokenizer, len(script)
