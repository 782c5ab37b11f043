"""What a found entity becomes in the output: its type, a mask, or a reversible placeholder.

* replace (default): `[EMAIL_ADDRESS]`.
* mask: every letter or digit becomes `*`, other characters (separators, `@`, `.`) stay, so the
  shape survives. For CREDIT_CARD, PHONE_NUMBER, IBAN_CODE and US_SSN the last four letters or
  digits stay visible, as on receipts (`**** **** **** 1234`); every other type is masked whole,
  since the tail of an email, a name or a key identifies too much.
* pseudonymize: `[EMAIL_ADDRESS_1]`, numbered per request in order of appearance, the same value
  getting the same placeholder; the vault (vault.py) remembers what each stands for.
"""

from __future__ import annotations

from typing import Protocol

from appliance.redact.vault import PseudonymVault

OPERATOR_NAMES = ("replace", "mask", "pseudonymize")
KEEP_LAST_TYPES = frozenset({"CREDIT_CARD", "PHONE_NUMBER", "IBAN_CODE", "US_SSN"})


class Operator(Protocol):
    def render(self, entity_type: str, value: str) -> str:
        """The output text for one entity; `value` is the original text it covers."""
        ...


class ReplaceOperator:
    def render(self, entity_type: str, value: str) -> str:
        return f"[{entity_type}]"


class MaskOperator:
    def __init__(self, char: str = "*", keep_last: int = 4, keep_last_types=KEEP_LAST_TYPES):
        if len(char) != 1:
            raise ValueError("mask char must be one character")
        self.char = char
        self.keep_last = keep_last
        self.keep_last_types = frozenset(keep_last_types)

    def render(self, entity_type: str, value: str) -> str:
        keep = self.keep_last if entity_type in self.keep_last_types else 0
        out = []
        for ch in reversed(value):
            if ch.isalnum():
                out.append(ch if keep > 0 else self.char)
                keep -= 1
            else:
                out.append(ch)
        return "".join(reversed(out))


class PseudonymOperator:
    def __init__(self, vault: PseudonymVault):
        self.vault = vault

    def render(self, entity_type: str, value: str) -> str:
        return self.vault.placeholder(entity_type, value)


def make_operator(name: str, *, vault: PseudonymVault | None = None, mask_char: str = "*",
                  mask_keep_last: int = 4) -> Operator:
    if name == "replace":
        return ReplaceOperator()
    if name == "mask":
        return MaskOperator(mask_char, mask_keep_last)
    if name == "pseudonymize":
        if vault is None:
            raise ValueError("the pseudonymize operator needs a vault")
        return PseudonymOperator(vault)
    raise ValueError(f"operator must be one of {OPERATOR_NAMES}, not {name!r}")
