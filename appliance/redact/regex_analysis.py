"""What a detector's regex can reach, derived from the regex itself.

The streaming redactor must know, for the text seen so far, which start positions could still
give a different match once more text arrives. Both answers come from the parsed pattern, so no
detector can declare a bound that disagrees with its regex:

* `bounds(pattern)`: the shortest and longest match and how far look-arounds peek before and after.
  An attempt at position t never reads at or beyond t + max_length + lookahead.
* `open_tail(pattern)`: a regex that, searched from t and anchored at the end of the buffer,
  matches when the text from t is a prefix of something the pattern could still consume or peek
  at, i.e. when the attempt at t may read past the end of the buffer. It over-approximates: a
  position it wrongly calls open only delays output, never changes it.

Both walk the tree of Python's own regex parser (`re._parser`, `sre_parse` before 3.11): the
parser is stable in practice and re-implementing it would be far riskier than depending on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

try:  # Python 3.11+
    from re import _parser as sre
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as sre  # type: ignore[no-redef]

_ONE_CHAR = (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN)
_REPEATS = tuple(op for op in (sre.MAX_REPEAT, sre.MIN_REPEAT, getattr(sre, "POSSESSIVE_REPEAT", None)) if op)
_LOOKAROUNDS = (sre.ASSERT, sre.ASSERT_NOT)
_CATEGORIES = {
    sre.CATEGORY_DIGIT: r"\d", sre.CATEGORY_NOT_DIGIT: r"\D",
    sre.CATEGORY_SPACE: r"\s", sre.CATEGORY_NOT_SPACE: r"\S",
    sre.CATEGORY_WORD: r"\w", sre.CATEGORY_NOT_WORD: r"\W",
}
_FLAG_LETTERS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"))


@dataclass(frozen=True)
class PatternBounds:
    min_length: int
    max_length: int
    lookbehind: int  # characters before a match's start that the pattern may inspect
    lookahead: int   # characters after the consumed text that the pattern may inspect

    @property
    def reach(self) -> int:
        """An attempt at t is decided once the text up to t + reach is known."""
        return self.max_length + self.lookahead


def _parse(pattern: re.Pattern):
    return sre.parse(pattern.pattern, pattern.flags)


def _width(subpattern) -> tuple[int, int]:
    low, high = subpattern.getwidth()
    if high >= sre.MAXREPEAT:
        raise ValueError("detector patterns must be bounded: replace * and + with {m,n}")
    return low, high


def bounds(pattern: re.Pattern) -> PatternBounds:
    tree = _parse(pattern)
    low, high = _width(tree)
    behind = ahead = 0
    # (sub-pattern, how far before the match's start its text may begin): a lookbehind inside a
    # lookbehind (`(?<!(?<![A-Za-z])inv[0-9])`) peeks past the outer one's start.
    stack = [(tree, 0)]
    while stack:
        seq, before = stack.pop()
        for op, av in seq:
            if op in (sre.AT, sre.GROUPREF, sre.GROUPREF_EXISTS):
                raise ValueError(f"detector patterns may not use {op}: its reach is not local")
            if op in _LOOKAROUNDS:
                direction, sub = av
                width = _width(sub)[1]
                if direction < 0:
                    behind = max(behind, before + width)
                    stack.append((sub, before + width))
                else:
                    ahead = max(ahead, width)
                    stack.append((sub, before))
                continue
            stack.extend((child, before) for child in _children(op, av))
    if low < 1:
        raise ValueError("detector patterns must not match the empty string")
    return PatternBounds(low, high, behind, ahead)


def _children(op, av) -> list:
    if op in _LOOKAROUNDS:
        return [av[1]]
    if op is sre.BRANCH:
        return list(av[1])
    if op is sre.SUBPATTERN:
        return [av[-1]]
    if op in _REPEATS:
        return [av[2]]
    if op is getattr(sre, "ATOMIC_GROUP", None):
        return [av]
    return []


# --- serialising a parse tree back to a regex -------------------------------------------------

def _char(code: int) -> str:
    return re.escape(chr(code))


def _class(items) -> str:
    negate, parts = "", []
    for op, av in items:
        if op is sre.NEGATE:
            negate = "^"
        elif op is sre.LITERAL:
            parts.append(_char(av))
        elif op is sre.RANGE:
            parts.append(f"{_char(av[0])}-{_char(av[1])}")
        elif op is sre.CATEGORY:
            parts.append(_CATEGORIES[av])
        else:
            raise ValueError(f"unsupported character-class item {op}")
    return f"[{negate}{''.join(parts)}]"


def _flags(add: int, remove: int) -> str:
    on = "".join(letter for flag, letter in _FLAG_LETTERS if add & flag)
    off = "".join(letter for flag, letter in _FLAG_LETTERS if remove & flag)
    return f"?{on}-{off}:" if off else (f"?{on}:" if on else "?:")


def _repeat_suffix(op, low: int, high: int) -> str:
    count = f"{{{low},}}" if high >= sre.MAXREPEAT else f"{{{low},{high}}}"
    if op is sre.MIN_REPEAT:
        return count + "?"
    if op is getattr(sre, "POSSESSIVE_REPEAT", None):
        return count + "+"
    return count


def _emit(node) -> str:
    op, av = node
    if op is sre.LITERAL:
        return _char(av)
    if op is sre.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is sre.ANY:
        return "."
    if op is sre.IN:
        return _class(av)
    if op is sre.BRANCH:
        return "(?:" + "|".join(_emit_seq(alt) for alt in av[1]) + ")"
    if op is sre.SUBPATTERN:
        _group, add, remove, sub = av
        return f"({_flags(add, remove)}{_emit_seq(sub)})"
    if op in _REPEATS:
        low, high, sub = av
        return f"(?:{_emit_seq(sub)}){_repeat_suffix(op, low, high)}"
    if op is getattr(sre, "ATOMIC_GROUP", None):
        return f"(?>{_emit_seq(av)})"
    if op in _LOOKAROUNDS:
        direction, sub = av
        kind = ("=" if op is sre.ASSERT else "!") if direction > 0 else ("<=" if op is sre.ASSERT else "<!")
        return f"(?{kind}{_emit_seq(sub)})"
    raise ValueError(f"unsupported regex construct {op}")


def _emit_seq(seq) -> str:
    return "".join(_emit(node) for node in seq)


# --- prefixes: which tails may still read past the end ----------------------------------------

def _prefix(seq, i: int = 0) -> str:
    """A regex for the strings an attempt of seq[i:] may read entirely and then want more of.

    Follows one rule per construct: a one-character item either stops here or is consumed and
    the rest continues; a group, branch or repeat either stops inside itself or completes and
    the rest continues; a lookahead of width w leaves the attempt open while fewer than w
    characters remain and they could begin its sub-pattern; a lookbehind reads only known text,
    so it filters like in the pattern.
    """
    if i == len(seq):
        return ""
    node = seq[i]
    op, av = node
    if op in _LOOKAROUNDS and av[0] < 0:
        return _emit(node) + _prefix(seq, i + 1)
    if op in _LOOKAROUNDS:
        # Undecided only while fewer characters remain than it may inspect, and those that do
        # remain could still start what it looks for.
        width = _width(av[1])[1]
        peek = f"(?=[\\s\\S]{{0,{width - 1}}}\\Z)(?:{_prefix(av[1])})" if width > 0 else "(?!)"
        return f"(?:{peek}|{_emit(node)}{_prefix(seq, i + 1)})"
    if op in _ONE_CHAR:
        return f"(?:{_emit(node)}{_prefix(seq, i + 1)})?"
    if op is sre.SUBPATTERN:
        _group, add, remove, sub = av
        inside = f"({_flags(add, remove)}{_prefix(sub)})"
        return f"(?:{inside}|{_emit(node)}{_prefix(seq, i + 1)})"
    if op is sre.BRANCH:
        inside = "|".join(_prefix(alt) for alt in av[1])
        return f"(?:{inside}|{_emit(node)}{_prefix(seq, i + 1)})"
    if op in _REPEATS:
        low, high, sub = av
        body = _emit_seq(sub)
        partial = f"(?:{body}){{0,{high - 1}}}(?:{_prefix(sub)})" if high >= 1 else ""
        return f"(?:{partial}|(?:{body}){{{low},{high}}}{_prefix(seq, i + 1)})"
    raise ValueError(f"unsupported regex construct {op}")


def open_tail(pattern: re.Pattern) -> re.Pattern:
    """The regex to search from a scan position: its first match start is the earliest open one."""
    bounds(pattern)  # rejects unbounded or non-local constructs before we build anything
    flags = pattern.flags & ~re.VERBOSE
    return re.compile(f"(?:{_prefix(list(_parse(pattern)))})\\Z", flags)


def serialize(pattern: re.Pattern) -> str:
    """The pattern re-emitted from its parse tree (tests check it matches like the original)."""
    return _emit_seq(list(_parse(pattern)))
