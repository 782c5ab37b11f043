"""Which token prefixes have their KV kept in the device pool: the block table, no ONNX Runtime.

A prompt is seen as blocks of `block_tokens` token ids. Block i's key is a SHA-256 over block
i-1's key and block i's ids (a hash chain, as vLLM keys its blocks), so one key names a whole
prefix and a lookup walks the chain until a key is missing: the longest cached prefix. Each
cached block owns one slot of the pool (the runner holds the KV; this table only says which slot
holds what). A full pool evicts the least recently used block that no request pins and that no
cached block continues (leaves before their parents, so every cached block's prefix stays cached).
Where the chain ends, `match_partial` finds the cached block that continues it with the most of
the prompt's next ids: its KV is right for those leading positions, so a hit need not end at a
block boundary (as SGLang's radix tree matches to the token).
The engine thread owns the table; other threads read `stats()`, a snapshot of counters.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import astuple, dataclass
from typing import Optional, Sequence

import numpy as np

_ROOT = b""  # the key before a prompt's first block


@dataclass(eq=False)  # blocks are compared by identity
class Block:
    slot: int  # where in the runner's pool its KV lies
    key: bytes
    parent: Optional["Block"]
    tokens: tuple[int, ...]  # its ids, for a partial match
    pins: int = 0  # requests copying from it or about to


@dataclass(frozen=True)
class PrefixCacheStats:
    capacity_bytes: int = 0
    held_bytes: int = 0
    lookups: int = 0
    looked_up_tokens: int = 0  # prompt tokens of every lookup
    hit_tokens: int = 0  # of those, the ones copied from the cache instead of prefilled
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.looked_up_tokens if self.looked_up_tokens else 0.0

    def __add__(self, other: "PrefixCacheStats") -> "PrefixCacheStats":
        return PrefixCacheStats(*(a + b for a, b in zip(astuple(self), astuple(other))))


def block_key(parent: bytes, tokens: Sequence[int]) -> bytes:
    return hashlib.sha256(parent + np.asarray(tokens, np.int64).tobytes()).digest()


class PrefixCache:
    def __init__(self, slots: int, block_tokens: int, block_bytes: int):
        self.block_tokens = block_tokens
        self.block_bytes = block_bytes
        self.slots = slots
        self._free: list[int] = []  # pop() hands out slot 0 first
        self._blocks: OrderedDict[bytes, Block] = OrderedDict()  # least recently used first
        # Parent key (_ROOT for first blocks) -> the cached blocks that continue it. A block that
        # has any is not evictable.
        self._continuations: dict[bytes, dict[bytes, Block]] = {}
        self._lookups = self._looked_up = self._hits = self._evictions = 0
        self.clear()

    def _chain(self, tokens: Sequence[int], blocks: int):
        """(index, key) of the first `blocks` blocks of `tokens`."""
        key, size = _ROOT, self.block_tokens
        for index in range(blocks):
            key = block_key(key, tokens[index * size : (index + 1) * size])
            yield index, key

    def match(self, tokens: Sequence[int], most_blocks: int) -> list[Block]:
        """The cached blocks of the longest cached prefix of `tokens`, at most `most_blocks` of them;
        marks them used (a parent after its child, so leaves age first)."""
        found = []
        for _, key in self._chain(tokens, most_blocks):
            block = self._blocks.get(key)
            if block is None:
                break
            found.append(block)
        for block in reversed(found):
            self._blocks.move_to_end(block.key)
        return found

    def match_partial(self, tokens: Sequence[int], found: Sequence[Block], most_tokens: int) -> tuple[Optional[Block], int]:
        """After the whole blocks `found` (match's answer for `tokens`), the cached block that
        continues them with the longest run of tokens' next ids, and that run's length (at most
        `most_tokens`, less than a block); (None, 0) where none shares even its first id. Marks
        the block used. Of equally long runs, the block stored last wins: it is the one a KV row
        most likely still holds, so the hit need not copy it (row_mirrors.py)."""
        start = len(found) * self.block_tokens
        following = tuple(tokens[start : start + min(most_tokens, self.block_tokens)])
        best, best_length = None, 0
        for block in self._continuations.get(found[-1].key if found else _ROOT, {}).values():  # oldest first
            length = _common_length(block.tokens, following)
            if length and length >= best_length:
                best, best_length = block, length
        if best is not None:  # its parents are not evictable while it is cached, whatever their age
            self._blocks.move_to_end(best.key)
        return best, best_length

    def record_lookup(self, prompt_tokens: int, hit_tokens: int) -> None:
        self._lookups += 1
        self._looked_up += prompt_tokens
        self._hits += hit_tokens

    @staticmethod
    def pin(blocks: Sequence[Block]) -> None:
        for block in blocks:
            block.pins += 1

    @staticmethod
    def unpin(blocks: Sequence[Block]) -> None:
        for block in blocks:
            block.pins -= 1

    def insert(self, tokens: Sequence[int], positions: int) -> list[tuple[int, int]]:
        """Takes slots for the blocks of tokens[:positions] not cached yet; returns (slot, first
        position) of each, whose KV the caller must store now. Stops where the pool has no slot
        left to give (every block pinned or continued)."""
        stored: list[tuple[int, int]] = []
        parent: Optional[Block] = None
        new: list[Block] = []
        for index, key in self._chain(tokens, positions // self.block_tokens):
            block = self._blocks.get(key)
            if block is None:
                slot = self._take_slot(protect=parent)
                if slot is None:
                    break
                ids = tuple(tokens[index * self.block_tokens : (index + 1) * self.block_tokens])
                block = self._blocks[key] = Block(slot, key, parent, ids)
                self._continuations.setdefault(parent.key if parent else _ROOT, {})[key] = block
                new.append(block)
                stored.append((slot, index * self.block_tokens))
            parent = block
        for block in reversed(new):  # the new blocks are the freshest, their parents fresher still
            self._blocks.move_to_end(block.key)
        return stored

    def clear(self) -> None:
        """Forgets every block, every slot free (no request may hold a pin): the empty cache, and
        the cache after a failed step, whose blocks may be indexed without their KV ever stored."""
        self._free = list(range(self.slots - 1, -1, -1))
        self._blocks.clear()
        self._continuations.clear()

    def _take_slot(self, protect: Optional[Block]) -> Optional[int]:
        if self._free:
            return self._free.pop()
        for block in self._blocks.values():  # oldest first
            if block.key not in self._continuations and not block.pins and block is not protect:
                del self._blocks[block.key]
                parent_key = block.parent.key if block.parent else _ROOT
                siblings = self._continuations[parent_key]
                del siblings[block.key]
                if not siblings:
                    del self._continuations[parent_key]
                self._evictions += 1
                return block.slot
        return None

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self.slots * self.block_bytes, len(self._blocks) * self.block_bytes,
                                self._lookups, self._looked_up, self._hits, self._evictions)


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading ids a and b share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
