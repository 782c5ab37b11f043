"""Chat messages to token ids exactly as the daemon makes them (the package's chat template and
tokenizer), for the contenders that take token ids, and the token counter the workload sizes by."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.engine.chat import ChatMessage, ChatTemplate  # jinja2 only: runs in the peers' venvs too


class Prompts:
    """Messages to token ids as the daemon makes them: the package's chat template, its tokenizer."""

    def __init__(self, package: Path):
        from tokenizers import Tokenizer

        manifest = json.loads((package / "manifest.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(package / "tokenizer.json"))

        def text(token_id):
            return (self.tokenizer.id_to_token(token_id) or "") if token_id is not None else ""

        self.template = ChatTemplate(manifest["chat_template"], text(manifest.get("bos_token_id")),
                                     text((manifest.get("eos_token_ids") or [None])[0]))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def render(self, messages) -> list[int]:
        return self.tokenizer.encode(self.template.render([ChatMessage(r, c) for r, c in messages])).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)
