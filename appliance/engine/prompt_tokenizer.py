"""Tokenizes prompts, reusing the ids of a prompt's leading text that an earlier prompt shared.

Every request behind a support bot's system prompt, and every turn of a chat, sends thousands of
characters it sent before; tokenizing them again took 1.1-1.7 ms of a 60-70 ms first token (the
SmolLM-135M shape's 1,050-token prompts on this machine's two cores), as much as gRPC costs.

A Hugging Face tokenizer splits its input on its added tokens before anything else and encodes
the text between them piece by piece, so where the text reaches a special token the ids before it
do not depend on what follows. The prompt is therefore cut at the starts of special tokens (a
chat template's turn markers): the longest leading text remembered gives its ids, only the rest
is encoded, and the prefixes that end at the rest's cuts are remembered in turn (least recently
used first out, within a budget of bytes).

That independence is checked, not assumed: a special token that strips the whitespace before it
or matches only whole words could reach across a cut, and a pre-tokenizer could treat a piece at
the start of the text unlike one after a special token. So each special token is probed, the
first time a prompt holds it, with texts cut before it; a token whose cut changes any ids is never
cut at, and a tokenizer whose post-processor appends ids (not only prepends) is never cut at all.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

import numpy as np
from tokenizers import Tokenizer

MAX_BYTES = 16 << 20  # remembered prefixes' texts and ids (~6 KB for 1,000 tokens of English)
MIN_CUT_CHARS = 256  # a shorter prefix is not worth remembering

# Texts on both sides of a probed cut: ASCII, spaces and newlines at its edges, CJK, digits.
_PROBES = ("Policy: refunds within 30 days.", " leading space", "\nnew line\n", "退货政策：三十天内。", "4417 ",
           "trailing space ", "")


class PromptTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_bytes: int = MAX_BYTES, min_cut_chars: int = MIN_CUT_CHARS):
        self.tokenizer = tokenizer
        self.max_bytes, self.min_cut_chars = max_bytes, min_cut_chars
        listed = getattr(tokenizer, "get_added_tokens_decoder", dict)  # (the tests' fake lists none)
        candidates = [added.content for added in listed().values()
                      if added.special and added.content and not (added.lstrip or added.single_word or added.normalized)]
        if candidates and _appends_nothing(tokenizer):
            self._cut = re.compile("|".join(re.escape(token) for token in sorted(candidates, key=len, reverse=True)))
        else:
            self._cut = None
        self._safe: dict[str, bool] = {}  # special token -> whether a cut before it keeps every id
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()
        self.held_bytes = 0
        self._lock = threading.Lock()
        self.reused_chars = 0  # characters whose ids came from a remembered prefix (for tests and stats)

    @property
    def cuts(self) -> bool:
        """Whether this tokenizer's prompts are cut at all."""
        return self._cut is not None

    def encode(self, text: str) -> list[int]:
        """The ids `tokenizer.encode(text)` gives, with special tokens."""
        if self._cut is None:
            return self.tokenizer.encode(text).ids
        starts = [m.start() for m in self._cut.finditer(text, self.min_cut_chars) if self._is_safe(m.group())]
        known, head = 0, None
        with self._lock:
            for start in reversed(starts):
                key = text[:start]
                head = self._texts.get(key)
                if head is not None:
                    self._texts.move_to_end(key)
                    known = start
                    break
        if head is None:
            encoding = self.tokenizer.encode(text)
            ids = encoding.ids
        else:
            encoding = self.tokenizer.encode(text[known:], add_special_tokens=False)
            ids = head.tolist() + encoding.ids
            self.reused_chars += known
        self._remember(text, head, known, encoding, [s for s in starts if s > known])
        return ids

    def _is_safe(self, token: str) -> bool:
        safe = self._safe.get(token)
        if safe is None:
            safe = self._safe[token] = _cut_keeps_ids(self.tokenizer, token)
        return safe

    def _remember(self, text: str, head, known: int, encoding, starts: list[int]) -> None:
        """Remembers text[:s] for each cut s past `known`: its ids end where the special token at s
        begins, in `encoding` (of text[known:], following `head`, the ids of text[:known])."""
        if not starts:
            return
        offsets, ids = encoding.offsets, np.asarray(encoding.ids, np.int32)
        position, found = 0, []
        for start in starts:
            local = start - known
            while position < len(offsets) and (offsets[position][0] < local or offsets[position][1] == 0):
                position += 1  # (0, 0): an id the post-processor added
            if position == len(offsets) or offsets[position][0] != local:
                return  # no id begins at the cut: leave the rest unremembered
            found.append((start, position))
        with self._lock:
            for start, position in found:
                key = text[:start]
                if key in self._texts:
                    self._texts.move_to_end(key)
                    continue
                prefix = ids[:position] if head is None else np.concatenate([head, ids[:position]])
                self._texts[key] = prefix
                self.held_bytes += _size(key, prefix)
            while self.held_bytes > self.max_bytes:
                self.held_bytes -= _size(*self._texts.popitem(last=False))


def _size(text: str, ids: np.ndarray) -> int:
    return len(text) + ids.nbytes  # (a text of CJK takes 2 bytes a character: near enough)


def _appends_nothing(tokenizer: Tokenizer) -> bool:
    """Whether the post-processor puts the same ids before every single text and none after it."""
    prefixes = set()
    for probe in _PROBES[:3]:
        with_special = tokenizer.encode(probe).ids
        plain = tokenizer.encode(probe, add_special_tokens=False).ids
        if with_special[len(with_special) - len(plain):] != plain:
            return False
        prefixes.add(tuple(with_special[: len(with_special) - len(plain)]))
    return len(prefixes) == 1


def _cut_keeps_ids(tokenizer: Tokenizer, token: str) -> bool:
    """Whether texts cut before `token` and encoded apart give the ids of the whole, by probe."""
    return all(tokenizer.encode(left + token + right).ids
               == tokenizer.encode(left).ids + tokenizer.encode(token + right, add_special_tokens=False).ids
               for left in _PROBES[:-1] for right in _PROBES)
