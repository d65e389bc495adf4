"""Prompt states by token prefix: an LRU bounded in bytes.

An RNN's whole context is its state, a few hundred KB whatever the prompt's length (the 169M
shape: 5 arrays of 768 x 12 float32 = 184 KB), so a prefix that many requests share -- a system
prompt, the earlier turns of a chat -- is prefilled once and its state kept. An entry is

    key     the prefix's token ids (int64 bytes)
    state   the model's state arrays after the prefix, batch of one: [(1, ...), ...]
    logits  (V,) the next-token logits after the prefix's last token

so a prompt equal to a cached prefix needs no model call at all. `lookup` finds the longest
cached prefix of a prompt; `insert` adds one and evicts the least recently used entries until the
entries fit in `max_bytes`. The arrays are shared, never copied: the model copies a state it is
given (check_state) before updating it, so a cached entry is never modified.

Used by the engine thread only; `stats` may be read from any thread.
"""
from __future__ import annotations

from collections import Counter, OrderedDict

import numpy as np


class PrefixCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[bytes, tuple[list, np.ndarray, int]] = OrderedDict()  # LRU first
        self._lengths: Counter = Counter()  # prefix length -> entries of that length
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0

    @staticmethod
    def _key(ids: np.ndarray) -> bytes:  # ids (n,)
        return np.ascontiguousarray(ids, dtype=np.int64).tobytes()

    def lookup(self, ids: np.ndarray) -> tuple[int, list | None, np.ndarray | None]:
        """The longest cached prefix of ids (T,): (its length n, state, logits), or (0, None, None)."""
        for n in sorted((n for n in self._lengths if n <= len(ids)), reverse=True):
            key = self._key(ids[:n])
            if key in self._entries:
                self._entries.move_to_end(key)
                self.hits += 1
                state, logits, _ = self._entries[key]
                return n, state, logits
        self.misses += 1
        return 0, None, None

    def insert(self, ids: np.ndarray, state: list, logits: np.ndarray) -> None:
        """Keep the state (arrays with a batch of one) and logits (V,) after the prefix ids (n,)."""
        key = self._key(ids)
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = len(key) + sum(s.nbytes for s in state) + logits.nbytes
        if size > self.max_bytes:
            return
        self._entries[key] = (state, logits, size)
        self._lengths[len(ids)] += 1
        self.bytes += size
        while self.bytes > self.max_bytes:
            old, (_, _, old_size) = self._entries.popitem(last=False)
            n = len(old) // 8
            self._lengths[n] -= 1
            if not self._lengths[n]:
                del self._lengths[n]
            self.bytes -= old_size
            self.evictions += 1

    def stats(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
