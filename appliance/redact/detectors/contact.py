"""EMAIL_ADDRESS and PHONE_NUMBER."""

from __future__ import annotations

import re
from functools import lru_cache

import phonenumbers

from appliance.redact.detector import Anchor, PatternDetector
from appliance.redact.detectors.numbers import NUMBER_RUN, group_ranges

_LOCAL = r"[A-Za-z0-9._%+\-]"
EMAIL = re.compile(
    rf"[A-Za-z0-9](?<!{_LOCAL}[A-Za-z0-9]){_LOCAL}{{0,63}}"   # local part, not glued to more of one
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}"  # domain labels
    r"[A-Za-z]{2,24}(?![A-Za-z0-9\-])"                        # top-level domain
)


def email_detector() -> PatternDetector:
    # The '@' sits at most 64 characters after the start (RFC 5321 local-part limit).
    return PatternDetector("email", "EMAIL_ADDRESS", EMAIL, score=0.95,
                           anchors=(Anchor(re.compile("@"), lead=64, hint="@"),))


# An optional "+", "(+" or "(", then 7 to 17 digits, each optionally after one separator:
# a space, dot or dash, a closing bracket, or an opening bracket. Not glued to letters, digits,
# or a decimal point on either side (`3.14159265358`, `SF1380013800`).
PHONE = re.compile(
    r"(?<![0-9A-Za-z+(])(?<![0-9][.,])"
    r"(?:\(?\+ ?|\()?[0-9](?:(?:[ .\-]|\)[ .\-]?|[ .\-]?\()?[0-9]){6,16}"
    r"(?![0-9A-Za-z]|[.,][0-9])"
)

# Cheap shape checks per region before asking phonenumbers (which costs ~35 us a call): most
# digit runs in chat text (dates, prices, order numbers) fail here.
_NATIONAL_SHAPES = {
    "CN": re.compile(r"1[3-9][0-9]{9}|0[1-9][0-9]{8,10}"),  # mobiles; landlines with area code
    "US": re.compile(r"1?[2-9][0-9]{2}[2-9][0-9]{6}"),
    "GB": re.compile(r"0[1-9][0-9]{8,9}"),
}
# North American numbers are written 3-3-4. Run together, ten digits are as often an ID or a
# timestamp as a phone number, and "2024-03-15 12" is a date and an hour. Chinese numbers are
# checked below: at most three groups of three or more digits.
_NATIONAL_GROUPINGS = {"US": {(3, 3, 4), (1, 3, 3, 4)}}
_DATE_START = re.compile(r"\(?(?:19|20)[0-9]{2}[-./ ](?:0?[1-9]|1[0-2])[-./ ](?:0?[1-9]|[12][0-9]|3[01])(?![0-9])")
_GROUP = re.compile(r"[0-9]+")


@lru_cache(maxsize=8192)
def is_phone_number(text: str, regions: tuple[str, ...]) -> bool:
    """Valid per phonenumbers: international (+ or 00) in any region, national in `regions`."""
    digits = "".join(ch for ch in text if ch.isdigit())
    if not 7 <= len(digits) <= 17 or _DATE_START.match(text):
        return False
    if text.lstrip("(").startswith("+"):
        return _valid(text, None)
    if digits.startswith("00"):
        return _valid("+" + digits[2:], None)
    grouping = tuple(len(group) for group in _GROUP.findall(text))
    for region in regions:
        shape = _NATIONAL_SHAPES.get(region)
        if shape is not None and not shape.fullmatch(digits):
            continue
        if region in _NATIONAL_GROUPINGS and grouping not in _NATIONAL_GROUPINGS[region]:
            continue
        if region == "CN" and (len(grouping) > 3 or min(grouping) < 3):
            continue  # 3-4-4, 4-8, 3-8 or run together; never "192.168.01.189"
        if _valid(text, region):
            return True
    return False


def _valid(text: str, region: str | None) -> bool:
    try:
        return phonenumbers.is_valid_number(phonenumbers.parse(text, region))
    except phonenumbers.NumberParseException:
        return False


def phone_detector(regions: tuple[str, ...] = ("CN", "US", "GB")) -> PatternDetector:
    def validate(match: re.Match):
        text, base = match.group(), match.start()
        # Whole digit groups from the candidate's start: a trailing count or extension may be
        # dropped, but a number never starts inside a run of groups (an IBAN's, an account's).
        for start, end, _digits in group_ranges(text, 7, 17, from_start=True):
            if start > 0 and text[start - 1] == "(":
                start -= 1  # keep the bracket of "(010) 1234 5678"
            if start == 0 and text[0] == "(" and text.count("(") > text.count(")"):
                start += 1  # a stray opening bracket is punctuation, not part of the number
            if is_phone_number(text[start:end], regions):
                return base + start, base + end
        return None

    return PatternDetector("phone", "PHONE_NUMBER", PHONE, score=0.75,
                           anchors=(NUMBER_RUN,), validate=validate)
