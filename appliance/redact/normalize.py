"""Length-preserving NFKC: full-width digits and letters become ASCII, offsets stay put.

Detectors match ASCII patterns, but people (and models) write `１３８００１３８０００`, `＠` or an
ideographic space. Full NFKC can change the length of a string (`ﬁ` -> `fi`), which would break
the promise that entity offsets index the caller's text. So we normalise one code point at a
time, and only where NFKC maps that code point to a single ASCII character: the result has the
same length as the input, and position i of one is position i of the other.

Because the mapping is per code point, normalising chunks one by one gives the same text as
normalising their concatenation, which the streaming redactor relies on.
"""

from __future__ import annotations

import re
import unicodedata


def _build_table() -> dict[int, str]:
    table: dict[int, str] = {}
    for code in range(0x80, 0x10000):
        char = chr(code)
        folded = unicodedata.normalize("NFKC", char)
        if len(folded) == 1 and folded != char and folded.isascii() and folded.isprintable():
            table[code] = folded
    return table


_TABLE = _build_table()
# One pass of a character class is far cheaper than translate() over text that needs nothing.
_NEEDS_FOLDING = re.compile("[" + "".join(re.escape(chr(code)) for code in sorted(_TABLE)) + "]")


def normalize(text: str) -> str:
    """Returns `text` with compatibility characters folded to ASCII; always the same length."""
    if text.isascii() or _NEEDS_FOLDING.search(text) is None:
        return text
    return text.translate(_TABLE)
