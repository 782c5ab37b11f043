"""A fake runner and tokenizer: the scheduler and engine are tested without ONNX Runtime."""

import threading

import numpy as np


class FakeRunner:
    """Row r's next token is a function of the tokens cached in that row: (sum + length) % 7 + 10.

    It keeps a per-row token log like a real KV cache, including moves, so a wrong compaction or a
    lost prefill shows up as wrong tokens. `gate` can hold the engine thread inside a step.
    """

    vocab = vocab_size = 32

    def __init__(self, max_batch=8, context_length=1000):
        self.max_batch = max_batch
        self.context_length = context_length
        self.rows = [[] for _ in range(max_batch)]
        self.gate = threading.Event()
        self.gate.set()
        self.steps = 0
        self.decode_sizes = []

    def _logits(self, row):
        logits = np.zeros(self.vocab, np.float32)
        logits[(sum(self.rows[row]) + len(self.rows[row])) % 7 + 10] = 1.0
        return logits

    def prefill(self, slot, token_ids, start):
        self.gate.wait(10)
        self.steps += 1
        assert len(self.rows[slot]) >= start, "prefill chunk out of order"
        self.rows[slot] = self.rows[slot][:start] + list(token_ids)
        return self._logits(slot)

    def decode(self, token_ids, lengths, first_row=0):
        self.gate.wait(10)
        self.steps += 1
        self.decode_sizes.append(len(token_ids))
        out = np.zeros((len(token_ids), self.vocab), np.float32)
        for index, (token, length) in enumerate(zip(token_ids, lengths)):
            row = first_row + index
            assert len(self.rows[row]) == length, f"row {row} holds {len(self.rows[row])} tokens, engine says {length}"
            self.rows[row].append(int(token))
            out[index] = self._logits(row)
        return out

    def move(self, src, dst, length):
        self.rows[dst] = list(self.rows[src][:length])

    def release(self, slot):
        self.rows[slot] = []


def expected_tokens(prompt, count):
    """What FakeRunner produces for a prompt run alone."""
    cache, out = list(prompt), []
    for _ in range(count):
        token = (sum(cache) + len(cache)) % 7 + 10
        out.append(token)
        cache.append(token)
    return out


class FakeTokenizer:
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i % 26)) for i in ids)

    def encode(self, text):
        raise NotImplementedError
