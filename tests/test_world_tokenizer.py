"""The RWKV World tokenizer: the ids of BlinkDL's TRIE_TOKENIZER (the `rwkv` pip package, optional:
those tests skip without it), lossless round trips of any text and any bytes, and streaming that
never splits a UTF-8 character. Independent references: TRIE_TOKENIZER itself; ids it produced,
committed below; `ast.literal_eval` of the vocabulary lines; a naive longest-match written here."""
import ast
import os

import pytest
from hypothesis import given, strategies as st

from rwkv_np.errors import InputError, ModelFileError
from rwkv_np.tokenizer import StreamDecoder, Tokenizer
from rwkv_np.tokenizer import WorldTokenizer
from rwkv_np.world_vocab import SHIPPED_VOCAB, WORLD_VOCAB_FILE

from conftest import shared_file


@pytest.fixture(scope="module")
def world():
    return WorldTokenizer.default()


@pytest.fixture(scope="module")
def reference():
    """BlinkDL's TRIE_TOKENIZER on the vocabulary file of its own package (not our copy)."""
    module = pytest.importorskip("rwkv.rwkv_tokenizer", reason="the rwkv pip package (pip install rwkv==0.8.32)"
                                 " is not installed; it holds the reference TRIE_TOKENIZER")
    return module.TRIE_TOKENIZER(os.path.join(os.path.dirname(module.__file__), WORLD_VOCAB_FILE))


@pytest.fixture(scope="module")
def literal_vocab():
    """Token id -> bytes read from the shipped file with ast.literal_eval (no code runs)."""
    vocab = {}
    with open(SHIPPED_VOCAB, encoding="utf-8") as f:  # text mode: "\r\n" -> "\n", as the reference reads
        for line in f:
            i, rest = line.rstrip("\n").split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            token = ast.literal_eval(literal)
            vocab[int(i)] = token.encode("utf-8") if isinstance(token, str) else token
            assert len(vocab[int(i)]) == int(length)
    return vocab


@pytest.fixture(scope="module")
def literal_to_id(literal_vocab):
    return {t: i for i, t in literal_vocab.items()}


def naive_greedy(to_id: dict[bytes, int], data: bytes) -> list[int]:
    """Longest match by trying every length from the longest token down: slow, obviously right."""
    longest = max(map(len, to_id))
    ids, i = [], 0
    while i < len(data):
        n = next(n for n in range(min(longest, len(data) - i), 0, -1) if data[i:i + n] in to_id)
        ids.append(to_id[data[i:i + n]])
        i += n
    return ids


# Strings the byte-level match must survive: CJK, emoji with ZWJ sequences, skin tones and flags,
# combining marks, right-to-left scripts with direction marks, NUL and control bytes, long runs
# (longer than the longest token, 128 bytes), and characters that no single token covers.
UNICODE_STRESS = [
    "漢字仮名交じり文、한국어 문장, 中文：你好，世界！",
    "👩‍👩‍👧‍👦 👨🏿‍💻 🧑🏽‍🤝‍🧑🏻 👋🏻👋🏼👋🏽👋🏾👋🏿 🇯🇵🇺🇦🏳️‍🌈 ❤️‍🔥 🫠🦀",
    "e\u0301\u0302 a\u0308\u0304 Z\u0351\u0363\u036b\u0300a\u0317l\u0489g\u0338o" + "\u0301" * 40,
    "مرحبا بالعالم \u200f‎עברית\u200e mixed שלום abc \u202eRTL override\u202c",
    "\x00\x01\x02\x1b[31mred\x1b[0m\r\n\t\x7f\x85\u2028\u2029\ufeff\ufffd",
    "a" * 5000, " " * 1000, "\n" * 300, "=" * 777, "🙂" * 500, "漢" * 400, "\u200d" * 200, "\x00" * 300,
    "丄丅丆" * 10 + "𠀀𠀁𪚥" + "\U0010fffd\U000e0001",
    "<|endoftext|>User: hi\n\nAssistant: ok<|endoftext|>",
    "    def f(x):\n        return {'a': [1, 2.5e-3]}  # 注释\n",
]

# Ids produced by TRIE_TOKENIZER (rwkv 0.8.32, rwkv/rwkv_tokenizer.py) on its own vocabulary file,
# so that runs without the rwkv package still check real ids.
REFERENCE_IDS = [
    ("Hello world", [33155, 40213]),
    ("\n\n", [261]),
    ("The quick brown fox jumps over the lazy dog.",
     [6699, 39418, 37917, 21704, 38828, 31601, 22590, 31261, 21551, 47]),
    ("User: 你好，请介绍一下你自己。\n\nAssistant:",
     [24281, 59, 33, 10464, 11685, 19137, 16738, 10382, 15484, 10250, 10258, 10464, 15847, 12144, 28329, 11,
      5585, 41693, 59]),
    ("漢字🙂", [14038, 11860, 3319, 2417]),
    ("👩\u200d👩\u200d👧 family", [3319, 146, 170, 9810, 3319, 146, 170, 9810, 3319, 146, 168, 45956]),
    ("naïve café", [2059, 27698, 37946]),
    ("<|endoftext|>", [61, 125, 25258, 7588, 2318, 125, 63]),
    ("\x00\x01\x1b[0m\r\n", [1, 2, 28, 92, 49, 110, 263]),
    ("مرحبا بالعالم", [2949, 2934, 2930, 2925, 2924, 48211, 2942, 28211, 2949]),
    ("e\u0301\u0302", [102, 2672, 2673]),
    ("    def f(x):\n        return x  # ok", [19250, 7334, 337, 41, 121, 501, 54807, 42178, 355, 267, 36, 4709]),
]
REFERENCE_BYTE_IDS = [  # TRIE_TOKENIZER.encodeBytes on bytes that are not valid UTF-8
    (b"\xff\xfe", [256, 255]),
    (b"\xe6\x96", [3104]),
    (b"abc\x80def", [6891, 129, 7334]),
    (b"\xf0\x9f\x99", [3319, 154]),
]

text_strategy = st.text(alphabet=st.characters(codec="utf-8"), max_size=80) | st.lists(
    st.sampled_from(UNICODE_STRESS[:5] + [" the", "\n\n", "ing", "你好", "🙂", "\u0301", "\x00", " " * 7]),
    max_size=12).map("".join)


# -- ids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, ids", REFERENCE_IDS)
def test_ids_are_the_committed_reference_ids(world, text, ids):
    assert world.encode(text) == ids
    assert world.decode(ids) == text


@pytest.mark.parametrize("data, ids", REFERENCE_BYTE_IDS)
def test_invalid_utf8_bytes_get_the_committed_reference_ids(world, data, ids):
    assert world.encode_bytes(data) == ids
    assert world.decode_bytes(ids) == data


def test_ids_match_trie_tokenizer_on_all_of_tinyshakespeare(world, reference):
    file = shared_file("tinyshakespeare.txt")
    text = file.read_text(encoding="utf-8")
    ours, theirs = world.encode(text), reference.encode(text)
    assert len(theirs) > 300_000
    first = next((k for k, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert ours == theirs, f"first difference at token {first}"


@pytest.mark.parametrize("text", UNICODE_STRESS, ids=range(len(UNICODE_STRESS)))
def test_ids_match_trie_tokenizer_on_unicode_stress(world, reference, text):
    assert world.encode(text) == reference.encode(text)


@given(text_strategy)
def test_ids_match_trie_tokenizer_on_any_text(world, reference, text):
    assert world.encode(text) == reference.encode(text)


@given(st.binary(max_size=60) | st.lists(st.sampled_from([b"\xe6", b"\x96", b"\xf0\x9f", b"\x80", b" ", b"a"]),
                                         max_size=30).map(b"".join))
def test_ids_match_trie_tokenizer_on_any_bytes(world, reference, data):
    assert world.encode_bytes(data) == reference.encodeBytes(data)


@given(text_strategy)
def test_ids_match_a_naive_longest_match(world, literal_to_id, text):
    assert world.encode(text) == naive_greedy(literal_to_id, text.encode("utf-8"))


def test_unicode_stress_matches_a_naive_longest_match(world, literal_to_id):
    for text in UNICODE_STRESS:
        assert world.encode(text) == naive_greedy(literal_to_id, text.encode("utf-8")), text[:20]


# -- the vocabulary --------------------------------------------------------------------------------
def test_every_token_has_the_bytes_of_its_literal(world, literal_vocab):
    assert sorted(literal_vocab) == list(range(1, 65530))
    assert [world.token_bytes(i) for i in range(1, 65530)] == [literal_vocab[i] for i in range(1, 65530)]


def test_every_token_has_the_bytes_trie_tokenizer_gives_it(world, reference):
    assert reference.idx2token == {i: world.token_bytes(i) for i in range(1, 65530)}


def test_end_of_text_and_unused_ids_decode_to_nothing(world):
    assert (world.eos_token_id, world.pad_token_id, world.vocab_size) == (0, 0, 65536)
    assert world.decode([0]) == "" and world.decode([33155, 0, 40213]) == "Hello world"
    assert [world.token_bytes(i) for i in range(65530, 65536)] == [b""] * 6
    assert 0 not in world.encode("<|endoftext|>")  # the text is not the token


def test_ids_outside_the_vocabulary_are_refused(world):
    for bad in (-1, 65536):
        with pytest.raises(InputError, match="outside the vocabulary"):
            world.decode([1, bad])
        with pytest.raises(InputError, match="outside the vocabulary"):
            world.token_bytes(bad)
    with pytest.raises(InputError, match="lone surrogate"):
        world.encode("a\ud800b")  # a Python str may hold one; UTF-8 (and TRIE_TOKENIZER) cannot
    with pytest.raises(InputError, match="must be a str"):
        world.encode(b"bytes")


# -- round trips and streaming ---------------------------------------------------------------------
@given(text_strategy)
def test_round_trip_on_any_text(world, text):
    assert world.decode(world.encode(text)) == text


@given(st.binary(max_size=80))
def test_round_trip_on_any_bytes(world, data):
    assert world.decode_bytes(world.encode_bytes(data)) == data


def test_tokens_can_split_a_character_and_streaming_holds_it(world):
    # "丄" (3 bytes) is the tokens b"\xe4\xb8" + b"\x84", "🦀" (4 bytes) is b"\xf0\x9f" + b"\xa6" + b"\x80"
    assert [world.token_bytes(i) for i in world.encode("丄")] == [b"\xe4\xb8", b"\x84"]
    stream = StreamDecoder(world)
    assert [stream.push([i]) for i in world.encode("丄🦀!")] == ["", "丄", "", "", "🦀", "!"]
    assert stream.flush() == ""


@given(text_strategy)
def test_streaming_never_splits_a_character(world, text):
    stream = StreamDecoder(world)
    pieces = [stream.push([i]) for i in world.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


# -- loading ---------------------------------------------------------------------------------------
def write_vocab(directory, extra: list[str], bytes_from: int = 0) -> str:
    """A small vocabulary in the reference format: bytes `bytes_from`..255 (byte b is id b + 1),
    then the `extra` lines ("<literal> <length>") from id 257 on."""
    lines = [f"{b + 1} {bytes((b,))!r} 1" if b >= 128 else f"{b + 1} {chr(b)!r} 1" for b in range(bytes_from, 256)]
    lines += [f"{257 + k} {lit}" for k, lit in enumerate(extra)]
    file = os.path.join(directory, WORLD_VOCAB_FILE)
    with open(file, "w", encoding="utf-8", newline="\r\n") as f:  # the shipped file's line ends
        f.write("\n".join(lines) + "\n")
    return file


def test_a_model_directory_with_a_vocabulary_file_uses_it(tmp_path):
    # 257 'ab', 258 'abc', 259 b'\xe6\x96', 260 '\u2028x' (escaped), 261 "'q", 262 U+2028 + 'y' (raw:
    # a line break to str.splitlines, not to the file format)
    write_vocab(tmp_path, ["'ab' 2", "'abc' 3", "b'\\xe6\\x96' 2", "'\\u2028x' 4", "\"'q\" 2", "'\u2028y' 4"])
    tok = Tokenizer.from_pretrained(tmp_path)
    assert isinstance(tok, WorldTokenizer)
    assert tok.encode("abcab\u2028x'qa\u2028y") == [258, 257, 260, 261, 98, 262]  # 98: 'a' (byte 97)
    assert tok.encode_bytes(b"\xe6\x96\x96") == [259, 151]  # 151: byte 0x96
    assert isinstance(Tokenizer.from_pretrained(tmp_path / WORLD_VOCAB_FILE), WorldTokenizer)


def test_a_world_model_directory_without_tokenizer_files_gets_the_shipped_one(tmp_path):
    assert Tokenizer.from_pretrained(tmp_path, vocab_size=65536) is WorldTokenizer.default()


@pytest.mark.parametrize("extra, message", [
    (["'ab' 3"], "the literal has 2 bytes, the line says 3"),
    (["ab 2"], "is not `<id> <str or bytes literal> <length>`"),
    (["__import__('os') 1"], "is not `<id> <str or bytes literal> <length>`"),
    (["b'\\x4' 1"], "is not `<id> <str or bytes literal> <length>`"),
    (["'a' 1"], "two ids stand for the same bytes"),
])
def test_a_malformed_vocabulary_is_a_one_line_error(tmp_path, extra, message):
    file = write_vocab(tmp_path, extra)
    with pytest.raises(ModelFileError, match=message) as e:
        WorldTokenizer.from_file(file)
    assert "\n" not in str(e.value)


def test_a_vocabulary_without_all_256_bytes_is_refused(tmp_path):
    file = write_vocab(tmp_path, ["'ab' 2"], bytes_from=1)
    with pytest.raises(ModelFileError, match="byte 0x00 is no token"):
        WorldTokenizer.from_file(file)
