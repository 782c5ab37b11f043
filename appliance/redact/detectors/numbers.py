"""Shared pieces of the number-shaped detectors (phone, card, SSN, resident ID, IPv4).

All of them consume only digits and a few separators (and phone numbers an extension after them),
so a whole-text scan visits only maximal runs of those characters (`NUMBER_RUN`), one run for all
five detectors.
"""

from __future__ import annotations

import re
from typing import Iterator

from appliance.redact.detector import Anchor

# A phone extension's marker and digits (`ext. 1234`, `x1234`, `转1234`, `，分机12`, `(ext. 12)`).
EXTENSION_WORD = r"(?:[Ee]xt(?:ension)?|EXT(?:ENSION)?)\.?|[Xx]|转|分机号?"
# Every character any number-shaped pattern may consume; a run starts where a match can start.
# The empty group marks runs right after two capitals: where an IBAN's check digits begin. A run
# goes on through extension markers in their loosest spelling, so that a phone number's match,
# which includes its extension, still ends inside the run.
_RUN_CHARS = r"[0-9Xx ()+.\-]*"
_RUNS = re.compile(rf"[0-9+(](?P<after_capitals>(?<=[A-Z]{{2}}[0-9]))?{_RUN_CHARS}"
                   rf"(?:[ ,，(]{{0,3}}(?:{EXTENSION_WORD})[ .:]{{0,2}}[0-9]{_RUN_CHARS})*")
NUMBER_RUN = Anchor(_RUNS, lead=0, encloses=True)
AFTER_CAPITALS_RUN = Anchor(_RUNS, lead=2, group="after_capitals")

_DIGITS = re.compile(r"[0-9]+")


def group_ranges(text: str, min_digits: int, max_digits: int, *, from_start: bool = False
                 ) -> Iterator[tuple[int, int, str]]:
    """(start, end, digits) of runs of whole digit groups, longest first, then leftmost.

    A candidate like `4111 1111 1111 1111 12` (a card, then an expiry month) fails as a whole;
    its groups tell where a shorter valid number may sit. Only whole groups, and only clean cuts:
    the part left out is at most two digits, or is joined by a separator the kept groups do not
    use. So `6285-3675-5702-3382-803` is one (invalid) number, never a card plus `803`, and the
    groups of an IBAN are never read as a phone number.
    `from_start`: only ranges that begin with the first group.
    """
    groups = [(m.start(), m.end()) for m in _DIGITS.finditer(text)]
    found = []
    firsts = range(min(1, len(groups))) if from_start else range(len(groups))
    for i in firsts:
        total = 0
        for j in range(i, len(groups)):
            total += groups[j][1] - groups[j][0]
            if total > max_digits:
                break
            if total >= min_digits and _clean_cut(text, groups, i, j):
                found.append((-total, groups[i][0], i, j))
    for _neg_total, _start, i, j in sorted(found):
        start = 0 if i == 0 else groups[i][0]  # whatever leads the first group ("+", "(+") belongs to it
        yield start, groups[j][1], "".join(text[a:b] for a, b in groups[i:j + 1])


def _clean_cut(text: str, groups: list[tuple[int, int]], i: int, j: int) -> bool:
    inner = {text[groups[k][1]:groups[k + 1][0]] for k in range(i, j)}
    if i > 0:
        dropped = sum(b - a for a, b in groups[:i])
        if dropped > 2 and text[groups[i - 1][1]:groups[i][0]] in inner:
            return False
    if j < len(groups) - 1:
        dropped = sum(b - a for a, b in groups[j + 1:])
        if dropped > 2 and text[groups[j][1]:groups[j + 1][0]] in inner:
            return False
    return True
