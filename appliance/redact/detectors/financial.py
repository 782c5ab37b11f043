"""CREDIT_CARD (issuer prefix, length and Luhn) and IBAN_CODE (ISO 13616 via stdnum.iban)."""

from __future__ import annotations

import re
from functools import lru_cache

from stdnum import iban, luhn

from appliance.redact.detector import PatternDetector
from appliance.redact.detectors.numbers import AFTER_CAPITALS_RUN, NUMBER_RUN, group_ranges

# 13 to 19 digits, single spaces or dashes allowed between any two. Only digits and ASCII
# letters may not touch it, so `卡号6222...` is caught and `YT2412...` (a parcel) is not. Nor may
# it continue a digit group (`DE89 3704 0044 ...`: the groups of an IBAN or account number), or
# be one part of a hyphen-joined code (`SKU-4111111111111111-RED`).
CARD = re.compile(
    r"[0-9](?<![0-9A-Za-z][0-9])(?<![0-9][ \-][0-9])(?<![A-Za-z]-[0-9])(?:[ \-]?[0-9]){12,18}"
    r"(?![0-9A-Za-z]|-[0-9A-Za-z])"
)

# Issuer prefixes and lengths (lowest prefix, highest prefix, lengths). Luhn alone would accept
# one random digit string in ten; requiring a real issuer range cuts false hits on order numbers.
_BRANDS = (
    ("4", "4", (13, 16, 19)),                                      # Visa
    ("51", "55", (16,)), ("2221", "2720", (16,)),                   # Mastercard
    ("34", "34", (15,)), ("37", "37", (15,)),                       # American Express
    ("6011", "6011", range(16, 20)), ("644", "649", range(16, 20)), ("65", "65", range(16, 20)),  # Discover
    ("3528", "3589", range(16, 20)),                                # JCB
    ("300", "305", range(14, 20)), ("36", "36", range(14, 20)), ("38", "39", range(16, 20)),  # Diners
    ("62", "62", range(16, 20)), ("81", "81", range(16, 20)),       # UnionPay
    ("50", "50", range(12, 20)), ("56", "69", range(12, 20)),       # Maestro
)


# Digits 7-10 of a Chinese resident ID are a birth year; 18-digit cards are rare, IDs (some of
# them mistyped) are not.
_ID_SHAPED = re.compile(r"[1-9][0-9]{5}(?:19|20)[0-9]{10}")


@lru_cache(maxsize=8192)
def is_card_number(digits: str) -> bool:
    fits = any(low <= digits[:len(low)] <= high and len(digits) in lengths for low, high, lengths in _BRANDS)
    return fits and not _ID_SHAPED.fullmatch(digits) and luhn.is_valid(digits)


def card_detector() -> PatternDetector:
    def validate(match: re.Match):
        text, base = match.group(), match.start()
        for start, end, digits in group_ranges(text, 13, 19):
            if is_card_number(digits):
                return base + start, base + end
        return None

    return PatternDetector("credit_card", "CREDIT_CARD", CARD, score=0.95,
                           anchors=(NUMBER_RUN,), validate=validate)


# Country code, check digits, then 11 to 30 letters or digits, optionally in space-separated
# groups. Upper case only, as printed on statements.
IBAN = re.compile(r"[A-Z](?<![0-9A-Za-z][A-Z])[A-Z][0-9]{2}(?:[ ]?[0-9A-Z]){11,30}(?![0-9A-Za-z])")
_SPACES = re.compile(" ")


@lru_cache(maxsize=4096)
def is_iban(compact: str) -> bool:
    return iban.is_valid(compact)


def iban_detector() -> PatternDetector:
    def validate(match: re.Match):
        # Greedy matching may run on into a capitalised word ("... 00 BIC"): try the longest
        # prefix that ends at a group boundary first.
        text, base = match.group(), match.start()
        ends = [m.start() for m in _SPACES.finditer(text)] + [len(text)]
        for end in reversed(ends):
            if is_iban(text[:end].replace(" ", "")):
                return base, base + end
        return None

    # Its check digits start a run of digits right after the two capitals of the country code.
    return PatternDetector("iban", "IBAN_CODE", IBAN, score=0.95,
                           anchors=(AFTER_CAPITALS_RUN,), validate=validate)
