"""Fixtures for the redaction tests: one Redactor per session (building one compiles every detector)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.redact import Redactor

DATA = Path(__file__).parent / "data"
EVAL_SET = DATA / "eval_set.jsonl"


def most_held_back(stream, text: str, piece: int) -> int:
    """Feeds `text` to a redaction stream `piece` characters at a time; the most it held back."""
    most = 0
    for i in range(0, len(text), piece):
        stream.feed(text[i:i + piece])
        most = max(most, stream.held_back)
    return most


def load_eval_cases() -> list[dict]:
    with EVAL_SET.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def redactor() -> Redactor:
    return Redactor()


@pytest.fixture(scope="session")
def eval_cases() -> list[dict]:
    return load_eval_cases()
