"""The OpenAI API's response bodies, built from the core's TextPieces and the registry's models.

Extension fields: `redactions` (entity counts by type and direction) on the last chunk or the
whole response, and `task` / `state` on a model.
"""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from tokenizers import Tokenizer

from appliance import finish_reasons
from appliance.engine.request import TokenEvent
from appliance.registry import ServedModel
from appliance.server.core import TextPiece
from appliance.server.errors import HttpError

# The engine's reasons that the OpenAI API has; a cancelled stream has no reader left.
_FINISH_REASONS = {finish_reasons.STOP: "stop", finish_reasons.LENGTH: "length"}


def error_body(error: HttpError) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def _redactions(counts: dict[tuple[str, str], int]) -> list[dict]:
    return [{"type": entity_type, "direction": direction, "count": count}
            for (direction, entity_type), count in sorted(counts.items())]


def usage(event: TokenEvent) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens the prefix cache held."""
    return {"prompt_tokens": event.prompt_tokens, "completion_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": event.cached_tokens}}


@dataclass
class Reply:
    """One request's answer, as chunks (`stream: true`) or whole: a chat completion or a text one."""

    chat: bool
    model: str = ""
    tokenizer: Tokenizer | None = None  # for logprobs' token texts
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created: int = field(default_factory=lambda: int(time.time()))
    _text_offset: int = 0

    def _envelope(self, kind: str, choices: list[dict]) -> dict:
        prefix = "chatcmpl" if self.chat else "cmpl"
        return {"id": f"{prefix}-{self.id}", "object": kind, "created": self.created, "model": self.model,
                "choices": choices}

    def chunk(self, piece: TextPiece, first: bool) -> dict:
        entries = self._logprobs(piece)
        choice = {"index": 0, "logprobs": self._logprobs_field(entries),
                  "finish_reason": self._finish(piece)}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": piece.text} if first else {"content": piece.text}
        else:
            choice["text"] = piece.text
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [choice])
        if piece.redacted is not None:
            body["redactions"] = _redactions(piece.redacted)
        return body

    def usage_chunk(self, last: TextPiece) -> dict:
        body = self._envelope("chat.completion.chunk" if self.chat else "text_completion", [])
        body["usage"] = usage(last.event)
        return body

    def whole(self, pieces: list[TextPiece]) -> dict:
        last = pieces[-1]
        text = "".join(p.text for p in pieces)
        entries = [entry for p in pieces for entry in self._logprobs(p)]
        choice = {"index": 0, "logprobs": self._logprobs_field(entries), "finish_reason": self._finish(last)}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        body = self._envelope("chat.completion" if self.chat else "text_completion", [choice])
        body["usage"] = usage(last.event)
        body["redactions"] = _redactions(last.redacted or {})
        return body

    @staticmethod
    def _finish(piece: TextPiece) -> str | None:
        reason = piece.event.finish_reason
        return None if reason is None else _FINISH_REASONS.get(reason, "stop")

    def _token(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id]) if self.tokenizer is not None else ""

    def _logprobs(self, piece: TextPiece) -> list[tuple[str, float, list[tuple[str, float]]]]:
        """(token text, logprob, top alternatives) per token; none where redaction hides tokens."""
        if piece.hides_tokens or not piece.event.logprobs:
            return []
        return [(self._token(token_id), logprob, [(self._token(t), lp) for t, lp in top])
                for token_id, (logprob, top) in zip(piece.event.token_ids, piece.event.logprobs)]

    def _logprobs_field(self, entries: list) -> dict | None:
        if not entries:
            return None
        if self.chat:
            return {"content": [{"token": text, "logprob": logprob, "bytes": list(text.encode()),
                                 "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                                  for t, lp in top]}
                                for text, logprob, top in entries]}
        offsets = []
        for text, _, _ in entries:
            offsets.append(self._text_offset)
            self._text_offset += len(text)
        return {"tokens": [text for text, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [dict(top) for _, _, top in entries], "text_offset": offsets}


def embeddings(vectors: np.ndarray, model: str, prompt_tokens: int, encoding: str) -> dict:
    def encoded(row: np.ndarray):
        if encoding == "base64":  # little-endian float32, as the OpenAI SDKs decode it
            return base64.b64encode(row.astype("<f4").tobytes()).decode()
        return row.tolist()

    return {"object": "list", "model": model, "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "data": [{"object": "embedding", "index": i, "embedding": encoded(row)} for i, row in enumerate(vectors)]}


def model_card(model: ServedModel) -> dict:
    return {"id": model.name, "object": "model", "created": 0, "owned_by": "appliance",
            "task": model.manifest.task if model.manifest is not None else "", "state": model.state.value}


def model_list(models: list[ServedModel]) -> dict:
    return {"object": "list", "data": [model_card(m) for m in models]}
