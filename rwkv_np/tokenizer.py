"""Tokenizers for RWKV models, and a UTF-8-safe incremental decoder for streaming.

Three kinds here, one interface (`encode`, `decode`, `token_bytes`, `__call__`):
  * `BpeTokenizer` -- a byte-level BPE `tokenizer.json` read with the `tokenizers` library. The
    RWKV-4 Pile models use GPT-NeoX-20B's (vocab 50277, added tokens included): "\\n" -> [187],
    "\\n\\n" -> [535], "This is an example." -> [1552, 310, 271, 1650, 15]. Its normalizer is NFC,
    so decode(encode(x)) == x holds for NFC text (other text comes back NFC-normalized). A copy
    ships in rwkv_np/assets/gpt-neox-20b/ for 50277-vocab models that bring no tokenizer.json.
  * `ByteTokenizer` -- token id = one UTF-8 byte (vocab 256), for byte models such as rwkv.cpp's
    tiny test models; used when a model directory has no tokenizer.json and vocab_size is 256.
  * `WorldTokenizer` -- the RWKV World vocabulary of the RWKV-5/6/7 World models (vocab 65536),
    greedy longest match over bytes (world_vocab.py), ids identical to BlinkDL's TRIE_TOKENIZER.

Every token of every kind is a fixed byte string (`token_bytes`), so text is decoded from bytes:
`StreamDecoder` feeds those bytes through an incremental UTF-8 decoder and therefore never emits
half a character, however the tokens cut the bytes.
"""
from __future__ import annotations

import codecs
import functools
import os

import numpy as np

from .errors import InputError, ModelFileError
from .world_vocab import SHIPPED_VOCAB, WORLD_VOCAB_FILE, WORLD_VOCAB_SIZE, build_trie, encode_greedy, read_vocab

TOKENIZER_FILE = "tokenizer.json"
MODEL_FILE_ENDINGS = (".safetensors", ".pth", ".pt", ".bin")
NEOX_VOCAB_SIZE = 50277  # GPT-NeoX-20B: ids 0..50276, added tokens included (the RWKV-4 Pile models)
SHIPPED_NEOX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt-neox-20b", TOKENIZER_FILE)


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): char of a token string -> the byte it stands for.

    Printable Latin-1 bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 bytes
    (controls, space, soft hyphen...) are moved, in byte order, to chars 256, 257, ... so that every
    token string is printable. Inverting the map turns a vocabulary entry back into raw bytes.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    char_to_byte = {chr(b): b for b in printable}
    moved = 0
    for b in range(256):
        if b not in printable:
            char_to_byte[chr(256 + moved)] = b
            moved += 1
    return char_to_byte


class Tokenizer:
    """Common interface. Subclasses set `vocab_size`, `eos_token_id`, `pad_token_id` and implement
    `encode` and `token_bytes`; decoding, batching and streaming are shared."""

    vocab_size: int
    eos_token_id: int | None
    pad_token_id: int

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, vocab_size: int | None = None) -> "Tokenizer":
        """The tokenizer of a model directory or model file, or of a tokenizer file.

        A tokenizer file: `*.txt` -> WorldTokenizer, anything else -> BpeTokenizer (tokenizer.json).
        A model directory, or the directory of a model file (.safetensors, .pth, .bin): its
        tokenizer.json -> BpeTokenizer, its rwkv_vocab_v20230424.txt -> WorldTokenizer. Without
        either, the model's vocab_size (from `vocab_size`, else its config) picks a shipped one:
        256 -> ByteTokenizer, 50277 -> GPT-NeoX-20B's BPE (RWKV-4 Pile/Raven), 65536 -> World.
        """
        path = os.fspath(path)
        model_file = os.path.isfile(path) and path.endswith(MODEL_FILE_ENDINGS)
        if os.path.isfile(path) and not model_file:
            return WorldTokenizer.from_file(path) if path.endswith(".txt") else BpeTokenizer.from_file(path)
        directory = os.path.dirname(os.path.abspath(path)) if model_file else path
        file = os.path.join(directory, TOKENIZER_FILE)
        if os.path.isfile(file):
            return BpeTokenizer.from_file(file)
        if os.path.isfile(os.path.join(directory, WORLD_VOCAB_FILE)):
            return WorldTokenizer.from_file(os.path.join(directory, WORLD_VOCAB_FILE))
        if vocab_size is None:
            from .load import read, read_config  # only for the fallbacks: the config's vocab_size
            vocab_size = (read(path) if model_file else read_config(path))[1].vocab_size
        if vocab_size == 256:
            return ByteTokenizer()
        if vocab_size == NEOX_VOCAB_SIZE:
            return BpeTokenizer.neox()
        if vocab_size == WORLD_VOCAB_SIZE:
            return WorldTokenizer.default()
        raise ModelFileError(f"{file}: not found, and rwkv_np ships no tokenizer for vocab_size {vocab_size} "
                             f"(it ships 256: bytes, {NEOX_VOCAB_SIZE}: GPT-NeoX-20B, {WORLD_VOCAB_SIZE}: "
                             "RWKV World); put the model's tokenizer.json there")

    # -- to implement ----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token stands for (may be part of a UTF-8 character)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.token_bytes(int(i)) for i in np.asarray(ids, dtype=np.int64).reshape(-1))

    def decode(self, ids) -> str:
        """Text of a 1-D id sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def batch_decode(self, rows) -> list[str]:
        return [self.decode(row) for row in rows]

    def __call__(self, text: str | list[str], return_tensors: str | None = "np") -> dict:
        """HF-style encoding. A str gives {"input_ids": (1, T) int64, "attention_mask": (1, T)}.

        A list of str gives (B, T_max) arrays, shorter rows LEFT-padded with pad_token_id and
        attention_mask 0 there; `generate` drops the padding, so it never reaches the model (RWKV
        has no attention mask). return_tensors=None gives ragged lists of ids instead, no padding.
        """
        single = isinstance(text, str)
        if not single and not (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
            raise InputError(f"tokenizer: text must be a str or a list of str, got {type(text).__name__}")
        rows = self.encode_batch([text] if single else list(text))
        if return_tensors is None:
            ids = rows[0] if single else rows
            mask = [1] * len(ids) if single else [[1] * len(r) for r in rows]
            return {"input_ids": ids, "attention_mask": mask}
        if return_tensors != "np":
            raise InputError(f"tokenizer: return_tensors must be 'np' or None, got {return_tensors!r}")
        width = max((len(r) for r in rows), default=0)
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)  # (B, T)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)             # (B, T)
        for b, row in enumerate(rows):
            if row:
                input_ids[b, width - len(row):] = row
                attention_mask[b, width - len(row):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}


class BpeTokenizer(Tokenizer):
    """A byte-level BPE tokenizer.json (the GPT-NeoX-20B one of the RWKV-4 Pile models)."""

    def __init__(self, backend, source: str = "<tokenizer>"):
        self.backend = backend  # tokenizers.Tokenizer
        self.source = source
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        alphabet = _byte_level_alphabet()
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        pieces = [backend.id_to_token(i) for i in range(self.vocab_size)]
        stray = set("".join(p for p in pieces if p is not None and p not in added)) - alphabet.keys()
        if stray:
            raise ModelFileError(f"{source}: tokens use {sorted(stray)[:5]!r}, which are not byte-level BPE"
                                 " characters; rwkv_np reads byte-level tokenizers only")
        to_latin1 = str.maketrans({c: chr(b) for c, b in alphabet.items()})
        self._bytes: list[bytes] = [
            b"" if p is None                       # a hole in the id range decodes to nothing
            else p.encode("utf-8") if p in added   # added tokens are stored as plain text
            else p.translate(to_latin1).encode("latin-1")
            for p in pieces]
        self.eos_token_id = backend.token_to_id("<|endoftext|>")
        self.pad_token_id = self.eos_token_id if self.eos_token_id is not None else 0

    @classmethod
    def from_file(cls, file: str) -> "BpeTokenizer":
        import tokenizers
        try:
            backend = tokenizers.Tokenizer.from_file(file)
        except FileNotFoundError:
            raise ModelFileError(f"{file}: not found") from None
        except Exception as e:  # tokenizers raises a plain Exception on malformed JSON
            raise ModelFileError(f"{file}: not a readable tokenizer.json ({str(e).splitlines()[0]})") from None
        decoder = type(backend.decoder).__name__ if backend.decoder is not None else None
        if decoder != "ByteLevel":
            raise ModelFileError(f"{file}: decoder is {decoder!r}; rwkv_np reads byte-level BPE (ByteLevel) only")
        return cls(backend, source=file)

    @classmethod
    def neox(cls) -> "BpeTokenizer":
        """GPT-NeoX-20B's tokenizer, shipped in rwkv_np/assets/gpt-neox-20b/, read once per process."""
        return _shipped_neox()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"tokenizer: text must be a str, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=False)]

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < self.vocab_size:
            raise InputError(f"tokenizer: token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
        return self._bytes[token_id]


class ByteTokenizer(Tokenizer):
    """Token id = byte value (vocab 256): text is its UTF-8 bytes. No end-of-text token."""

    vocab_size = 256
    eos_token_id = None
    pad_token_id = 0

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"tokenizer: text must be a str, got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < 256:
            raise InputError(f"tokenizer: token id {token_id} is outside the byte vocabulary [0, 256)")
        return bytes((token_id,))

    def decode_bytes(self, ids) -> bytes:  # one array conversion instead of a join per token
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            bad = ids[(ids < 0) | (ids > 255)][0]
            raise InputError(f"tokenizer: token id {bad} is outside the byte vocabulary [0, 256)")
        return ids.astype(np.uint8).tobytes()


class StreamDecoder:
    """Turns tokens into text as they arrive, one piece per `push`, never splitting a character.

    Bytes of an unfinished UTF-8 character are held until the token that completes it arrives;
    `flush()` ends the stream (left-over bytes of a broken character become U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_ids) -> str:
        return self._utf8.decode(self.tokenizer.decode_bytes(token_ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


# -- World -----------------------------------------------------------------------------------
class WorldTokenizer(Tokenizer):
    """The RWKV World tokenizer: ids identical to TRIE_TOKENIZER's (rwkv pip package)."""

    vocab_size = WORLD_VOCAB_SIZE
    eos_token_id = 0
    pad_token_id = 0

    def __init__(self, vocab: list[bytes], source: str = "<vocab>"):
        """`vocab[i]` = the bytes of token i (b"" for ids that are no entry, such as 0)."""
        self.source = source
        if len(vocab) > WORLD_VOCAB_SIZE:
            raise ModelFileError(f"{source}: {len(vocab)} ids, more than the {WORLD_VOCAB_SIZE} of a World model")
        self._bytes = list(vocab) + [b""] * (WORLD_VOCAB_SIZE - len(vocab))  # id -> bytes
        ids = [i for i, t in enumerate(self._bytes) if t]
        if len(set(self._bytes[i] for i in ids)) != len(ids):
            raise ModelFileError(f"{source}: two ids stand for the same bytes")
        ids.sort(key=self._bytes.__getitem__)
        entries = [self._bytes[i] for i in ids]
        singles = {t[0] for t in entries if len(t) == 1}
        if len(singles) != 256:
            missing = min(set(range(256)) - singles)
            raise ModelFileError(f"{source}: byte {missing:#04x} is no token; a World vocabulary has all 256")
        self._trie = build_trie(entries, ids)  # node_byte, node_token, child_lo, child_hi (N,) each

    @classmethod
    def from_file(cls, file: str | os.PathLike) -> "WorldTokenizer":
        file = os.fspath(file)
        return cls(read_vocab(file), source=file)

    @classmethod
    def default(cls) -> "WorldTokenizer":
        """The vocabulary shipped in rwkv_np/assets/rwkv-world/, read once per process."""
        return _shipped()

    def encode_bytes(self, data: bytes) -> list[int]:
        """Ids of any byte string, valid UTF-8 or not (TRIE_TOKENIZER.encodeBytes)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"tokenizer: data must be bytes, got {type(data).__name__}")
        src = np.frombuffer(data, dtype=np.uint8)  # (n,)
        return encode_greedy(src, *self._trie).tolist()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"tokenizer: text must be a str, got {type(text).__name__}")
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate: a Python str may hold one, UTF-8 cannot
            raise InputError(f"tokenizer: text holds U+{ord(text[e.start]):04X} (a lone surrogate) at index"
                             f" {e.start}, which UTF-8 cannot encode") from None
        return self.encode_bytes(data)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < WORLD_VOCAB_SIZE:
            raise InputError(f"tokenizer: token id {token_id} is outside the vocabulary [0, {WORLD_VOCAB_SIZE})")
        return self._bytes[token_id]

    def decode_bytes(self, ids) -> bytes:  # one range check for the whole sequence
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= WORLD_VOCAB_SIZE):
            bad = ids[(ids < 0) | (ids >= WORLD_VOCAB_SIZE)][0]
            raise InputError(f"tokenizer: token id {bad} is outside the vocabulary [0, {WORLD_VOCAB_SIZE})")
        return b"".join(map(self._bytes.__getitem__, ids.tolist()))


@functools.lru_cache(maxsize=1)
def _shipped_neox() -> BpeTokenizer:
    return BpeTokenizer.from_file(SHIPPED_NEOX)


@functools.lru_cache(maxsize=1)
def _shipped() -> WorldTokenizer:
    return WorldTokenizer.from_file(SHIPPED_VOCAB)
