"""The RWKV World vocabulary (`rwkv_vocab_v20230424`) of the RWKV-5/6/7 World models: reading it,
and the greedy longest match that tokenizer.WorldTokenizer encodes with.

What it computes is BlinkDL's `TRIE_TOKENIZER` (the `rwkv` pip package, rwkv/rwkv_tokenizer.py):
text is turned into its UTF-8 bytes, and from the first byte on, the LONGEST vocabulary entry that
the remaining bytes begin with becomes the next token (greedy longest match; no merges, no
normalization). All 256 single bytes are entries, so every byte string can be encoded, and
decode(encode(x)) == x for any str that UTF-8 can encode (a lone surrogate is refused).
"Hello world" -> [33155, 40213].

The vocabulary file has one line per token, `<id> <Python str or bytes literal> <byte length>`
(CRLF line ends in the published file):
    1 '\\x00' 1
    261 '\\n\\n' 2
    3104 b'\\xe6\\x96' 2          (a bytes literal: part of a UTF-8 character)
    33155 'Hello' 5
ids run 1..65529. Id 0 is `<|endoftext|>` (the end of a document in World training data); it is in
no line, never comes out of `encode`, and decodes to no bytes (TRIE_TOKENIZER has no entry for
it: its decodeBytes raises KeyError, its decode gives U+FFFD for the whole text). The models
have 65,536 embedding rows, so ids 65530..65535 exist too and decode to no bytes as well.

How the match is found fast: a byte trie in flat arrays, walked by one Numba loop
(`encode_greedy`): from position i, follow the child for each next byte -- a binary search among
the node's children, which sit side by side in byte order -- and keep the deepest node that is a
whole entry. The trie (116,078 nodes) is built by NumPy from the sorted vocabulary (`build_trie`)
in about 0.1 s; tinyshakespeare (1.1 MB) encodes at about 50 MB/s, 25-30x TRIE_TOKENIZER
(tools/bench_tokenizer.py).
"""
from __future__ import annotations

import codecs
import os

import numpy as np
from numba import njit

from .errors import ModelFileError

WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SIZE = 65536  # embedding rows of the World models (vocabulary ids 0..65529 + 6 unused)
SHIPPED_VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "rwkv-world",
                             WORLD_VOCAB_FILE)


# -- the vocabulary file ---------------------------------------------------------------------------
def _parse_literal(lit: str) -> bytes | None:
    """The bytes of one Python str/bytes literal as written by repr(), or None if it is not one.

    No eval: the quotes are checked, then the escapes (\\xNN \\uNNNN \\UNNNNNNNN \\n \\t \\\\ \\' ...)
    are decoded by codecs that only decode: `unicode_escape` for a str literal, whose characters
    then become UTF-8, and `escape_decode` for a bytes literal, which may hold only ASCII.
    """
    is_bytes = lit[:1] == "b"
    body = lit[1:] if is_bytes else lit
    if len(body) < 2 or body[0] not in "'\"" or body[-1] != body[0]:
        return None
    body = body[1:-1]
    try:
        if is_bytes:
            if not body.isascii():
                return None
            return codecs.escape_decode(body.encode("ascii"))[0] if "\\" in body else body.encode("ascii")
        if "\\" in body:
            # non-Latin-1 characters -> \\uXXXX first, so that unicode_escape sees only Latin-1 bytes
            body = body.encode("latin-1", "backslashreplace").decode("unicode_escape")
        return body.encode("utf-8")
    except (UnicodeError, ValueError):  # a broken escape such as \\x4, or a lone surrogate
        return None


def read_vocab(file: str) -> list[bytes]:
    """Token id -> bytes, for ids 0..max id (ids without a line -- id 0 -- get b"")."""
    try:
        with open(file, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ModelFileError(f"{file}: not found") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{file}: not UTF-8 text (byte {e.start})") from None
    entries: dict[int, bytes] = {}
    # split on "\n" only: str.splitlines would also cut at U+2028, U+0085... inside a literal
    for n, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if not line:
            continue
        first, last = line.find(" "), line.rfind(" ")
        head, tail = line[:first], line[last + 1:]
        token = _parse_literal(line[first + 1:last]) if 0 < first < last else None
        if not token or not (head + tail).isascii() or not head.isdigit() or not tail.isdigit():
            raise ModelFileError(f"{file}: line {n} is not `<id> <str or bytes literal> <length>`: {line[:60]!r}")
        if len(token) != int(tail):
            raise ModelFileError(f"{file}: line {n}: the literal has {len(token)} bytes, the line says {tail}")
        if not 1 <= int(head) < WORLD_VOCAB_SIZE or int(head) in entries:
            raise ModelFileError(f"{file}: line {n}: id {head} is 0, repeated, or not below {WORLD_VOCAB_SIZE}")
        entries[int(head)] = token
    if not entries:
        raise ModelFileError(f"{file}: no tokens")
    vocab = [b""] * (max(entries) + 1)
    for i, token in entries.items():
        vocab[i] = token
    return vocab


# -- the trie ----------------------------------------------------------------------------------------
def build_trie(entries: list[bytes], ids: list[int]):
    """A byte trie of the entries, in flat arrays, built with NumPy from the sorted entries.

    `entries` sorted as byte strings, `ids` their token ids. A node is a prefix of some entry;
    nodes are numbered breadth first, siblings in byte order, so the children of node u are the
    contiguous nodes child_lo[u] <= v < child_hi[u], and node b (0 <= b < 256) is the one-byte
    prefix b (every World vocabulary holds all 256 bytes, checked by the caller).
    -> node_byte (N,) uint8: the last byte of the node's prefix; node_token (N,) int64: the id of
       the entry equal to the prefix, or -1; child_lo, child_hi (N,) int64.

    Why sorting gives the trie: in sorted order, the entries that begin with a prefix form one
    contiguous run, led by the entry equal to it. So entry k creates exactly the nodes of its
    prefixes longer than its common prefix with entry k-1 (lcp); listed entry by entry, each
    entry's new nodes by depth, they are the trie in preorder, where the parent of a node at depth
    d is the last node at depth d-1 before it.
    """
    length = np.array([len(t) for t in entries], dtype=np.int64)                 # (V,)
    data = np.frombuffer(b"".join(entries), dtype=np.uint8)                      # (total,)
    start = np.concatenate([[0], np.cumsum(length)[:-1]])                        # (V,)
    # padded (V, max_len) copy, -1 after each entry's end, to find lcp(k-1, k) in one comparison
    padded = np.full((len(entries), int(length.max()) + 1), -1, dtype=np.int16)
    rows = np.repeat(np.arange(len(entries)), length)
    padded[rows, np.arange(data.size) - start[rows]] = data
    lcp = np.zeros(len(entries), dtype=np.int64)                                 # (V,)
    lcp[1:] = np.argmax(padded[1:] != padded[:-1], axis=1)  # first difference; distinct entries differ
    # the nodes in preorder: entry k contributes depths lcp[k]+1 .. length[k]
    count = length - lcp
    entry = np.repeat(np.arange(len(entries)), count)                            # (N,)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])
    depth = np.arange(entry.size) - first[entry] + lcp[entry] + 1                # (N,)
    # renumber breadth first (by depth, preorder within a depth); keys sorted = that order
    n = entry.size
    order = np.argsort(depth * n + np.arange(n), kind="stable")
    keys = (depth * n + np.arange(n))[order]
    entry, depth = entry[order], depth[order]
    node_byte = data[start[entry] + depth - 1]
    node_token = np.where(length[entry] == depth, np.asarray(ids, dtype=np.int64)[entry], -1)
    # parent = the last node at depth-1 that comes before the node in preorder (-1: the root)
    pre = keys - depth * n
    parent = np.where(depth > 1, np.searchsorted(keys, (depth - 1) * n + pre) - 1, -1)
    child_lo = np.searchsorted(parent, np.arange(n), side="left")  # parent is non-decreasing
    child_hi = np.searchsorted(parent, np.arange(n), side="right")
    return node_byte, node_token, child_lo, child_hi


@njit(cache=True)
def encode_greedy(src, node_byte, node_token, child_lo, child_hi):
    """Greedy longest match of the bytes `src` (n,) uint8 over the trie (`build_trie`'s arrays).
    -> (m,) int64 token ids, m <= n.

    From position i: walk down the trie along src[i], src[i+1], ... (node src[i] is the one-byte
    prefix) while the child exists, remembering the deepest node that is a whole entry; that
    entry is the token, and the next one starts after it.
    """
    n = src.shape[0]
    out = np.empty(n, dtype=np.int64)
    m = 0
    i = 0
    while i < n:
        u = np.int64(src[i])
        best_id = node_token[u]
        best_len = 1
        depth = 1
        while i + depth < n:
            c = src[i + depth]
            lo = child_lo[u]
            hi = child_hi[u]
            while lo < hi:  # binary search for byte c among u's children (sorted by byte)
                mid = (lo + hi) >> 1
                if node_byte[mid] < c:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == child_hi[u] or node_byte[lo] != c:
                break
            u = lo
            depth += 1
            if node_token[u] >= 0:
                best_id = node_token[u]
                best_len = depth
        out[m] = best_id
        m += 1
        i += best_len
    return out[:m]
