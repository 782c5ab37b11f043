"""One spelling per value, so `138 0013 8000` and `13800138000` are the same person.

Used by the pseudonym vault (same value, same placeholder) and by audit hashes (same value, same
hash across requests).
"""

from __future__ import annotations

from appliance.redact.normalize import normalize

# Types whose separators carry no meaning: spaces, dashes, dots and brackets are dropped.
_COMPACT_TYPES = frozenset({"PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "CN_RESIDENT_ID"})


def canonical_value(entity_type: str, value: str) -> str:
    value = normalize(value).strip()
    if entity_type in _COMPACT_TYPES:
        keep_plus = entity_type == "PHONE_NUMBER" and value.startswith(("+", "(+"))
        compact = "".join(ch for ch in value if ch.isalnum()).upper()
        return "+" + compact if keep_plus else compact
    if entity_type in ("EMAIL_ADDRESS", "IP_ADDRESS"):
        return value.lower()
    return value
