"""IP_ADDRESS, v4 and v6, valid per the standard library's ipaddress module."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from appliance.redact.detector import Anchor, PatternDetector
from appliance.redact.detectors.numbers import NUMBER_RUN

# Four dotted parts, not glued to letters, digits or dots: `v1.2.3.4` and `1.2.3.4.5` are
# version strings, not addresses.
IPV4 = re.compile(r"[0-9](?<![0-9A-Za-z.][0-9])[0-9]{0,2}(?:\.[0-9]{1,3}){3}(?![0-9A-Za-z]|\.[0-9])")


def ipv4_detector() -> PatternDetector:
    def validate(match: re.Match):
        try:
            ipaddress.IPv4Address(match.group())  # rejects parts over 255 and leading zeros
        except ValueError:
            return None
        return match.span()

    return PatternDetector("ipv4", "IP_ADDRESS", IPV4, score=0.9, anchors=(NUMBER_RUN,), validate=validate)


# A run of hex digits, colons and dots with a colon within its first five characters; not glued
# to word characters (`std::vector`, `a::b` in code stay untouched).
IPV6 = re.compile(r"(?<![0-9A-Za-z_:.])(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:.]{2,45}(?![0-9A-Za-z_])")
_HEX_GROUP = re.compile(r"[0-9A-Fa-f]+")


@lru_cache(maxsize=4096)
def is_ipv6(text: str) -> bool:
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError:
        return False
    # "a::b" parses, but it is far likelier code than an address: ask for two groups and a digit.
    groups = _HEX_GROUP.findall(text)
    return address is not None and len(groups) >= 2 and any(ch.isdigit() for ch in text)


def ipv6_detector() -> PatternDetector:
    def validate(match: re.Match):
        text = match.group().rstrip(".")  # a full stop ending the sentence
        if is_ipv6(text):
            return match.start(), match.start() + len(text)
        return None

    return PatternDetector("ipv6", "IP_ADDRESS", IPV6, score=0.9,
                           anchors=(Anchor(re.compile(":"), lead=4, hint=":"),), validate=validate)
