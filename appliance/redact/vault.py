"""The per-request pseudonym vault: placeholders out, originals back in.

A vault lives in memory for one request and is never persisted or logged (its repr shows only a
count). `restore` puts originals back for callers whose key may see them; placeholders the vault
did not issue are left as they are. Values are matched in canonical form (canonical.py), so a
number written twice with different spacing gets one placeholder; it restores to the spelling
seen first.
"""

from __future__ import annotations

import re
from collections import Counter

from appliance.redact.canonical import canonical_value
from appliance.redact.regex_analysis import bounds, open_tail

# `[EMAIL_ADDRESS_12]`: a type name, an underscore, a number from 1.
PLACEHOLDER = re.compile(r"\[[A-Z][A-Z_]{0,39}_[1-9][0-9]{0,5}\]")


class PseudonymVault:
    def __init__(self) -> None:
        self._by_value: dict[tuple[str, str], str] = {}
        self._originals: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._originals)

    def __repr__(self) -> str:
        return f"PseudonymVault({len(self)} placeholders)"

    def placeholder(self, entity_type: str, value: str) -> str:
        key = (entity_type, canonical_value(entity_type, value))
        found = self._by_value.get(key)
        if found is None:
            self._counts[entity_type] += 1
            found = f"[{entity_type}_{self._counts[entity_type]}]"
            self._by_value[key] = found
            self._originals[found] = value
        return found

    def restore(self, text: str) -> str:
        if not self._originals or "[" not in text:
            return text
        return PLACEHOLDER.sub(lambda m: self._originals.get(m.group(), m.group()), text)

    def restorer(self) -> "RestoreStream":
        return RestoreStream(self)


class RestoreStream:
    """`restore` over a token stream: concatenated output equals `vault.restore(whole_text)`.

    Holds back only a tail that could still grow into a placeholder (from a `[` on), which is
    never longer than the longest placeholder.
    """

    _OPEN = open_tail(PLACEHOLDER)
    _REACH = bounds(PLACEHOLDER).reach

    def __init__(self, vault: PseudonymVault):
        self._vault = vault
        self._held = ""

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        if "[" not in text:
            self._held = ""
            return text
        tail = self._OPEN.search(text, max(0, len(text) - self._REACH + 1))
        cut = tail.start() if tail else len(text)
        self._held = text[cut:]
        return self._vault.restore(text[:cut])

    def close(self) -> str:
        text, self._held = self._held, ""
        return self._vault.restore(text)
