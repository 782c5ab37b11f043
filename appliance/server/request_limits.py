"""Bounds on what one request may carry, checked the same way whichever door it came in by."""

from __future__ import annotations

from typing import Optional, Sequence

from appliance.engine.chat import ChatMessage
from appliance.errors import InvalidRequest

MAX_PROMPT_CHARS = 1_000_000
# Embed and Classify texts together; the count (256) and each text's tokens (the model's context)
# are checked by the encoder, this bounds the tokenizing done before those checks can refuse.
MAX_TEXTS_CHARS = 1_000_000


def require_model(name: str) -> str:
    if not name:
        raise InvalidRequest("model", "is required")
    return name


def check_prompt(prompt: str, messages: Optional[Sequence[ChatMessage]]) -> None:
    """Exactly one of a prompt and a conversation, within MAX_PROMPT_CHARS (the chat template
    checks the messages' count and roles)."""
    if messages and prompt:
        raise InvalidRequest("prompt", "give either prompt or messages, not both")
    if not messages:
        if not prompt:
            raise InvalidRequest("prompt", "must not be empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidRequest("prompt", f"is longer than {MAX_PROMPT_CHARS} characters")
        return
    if sum(len(m.content) for m in messages) > MAX_PROMPT_CHARS:
        raise InvalidRequest("messages", f"hold more than {MAX_PROMPT_CHARS} characters")


def check_texts(texts: Sequence[str], field: str = "texts") -> list[str]:
    if sum(len(t) for t in texts) > MAX_TEXTS_CHARS:
        raise InvalidRequest(field, f"hold more than {MAX_TEXTS_CHARS} characters")
    return list(texts)
