"""A greedy path through a runner, prompt prefilled in chunks, for comparing runners logit by logit."""

from __future__ import annotations

import numpy as np


def greedy_path(runner, prompt: list[int], steps: int, chunk: int = 4) -> tuple[list[int], np.ndarray]:
    """The greedy tokens and every step's logits [steps, vocab] from row 0."""
    for start in range(0, len(prompt), chunk):
        logits = runner.prefill(0, prompt[start:start + chunk], start)
    every, tokens = [logits], [int(np.argmax(logits))]
    while len(tokens) < steps:
        logits = runner.decode(np.asarray([tokens[-1]]), np.asarray([len(prompt) + len(tokens) - 1]))[0].copy()
        every.append(logits)
        tokens.append(int(np.argmax(logits)))
    return tokens, np.stack(every)
