"""Tokenizers: the GPT-NeoX-20B ids the RWKV-4 Pile models were trained with, lossless round trips,
and streaming that never splits a UTF-8 character. References: the ids published with the model
(RWKV4_SPEC.md) and the `tokenizers` library's own decode."""
import json
import unicodedata

import numpy as np
import pytest
from hypothesis import given, strategies as st

from rwkv_np.errors import ModelFileError
from rwkv_np.tokenizer import SHIPPED_NEOX, BpeTokenizer, ByteTokenizer, StreamDecoder, Tokenizer

# Text that exercises multi-byte UTF-8: accents, CJK, emoji (4 bytes), combining marks, controls.
unicode_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60) | st.sampled_from(
    ["é漢字🙂", "naïve café", "a\u0301", "\n\n\t  x", "👩‍👩‍👧 family", "<|endoftext|>tail"])


@pytest.fixture(scope="module")
def neox():
    """The copy shipped in rwkv_np/assets/ (test_new_user.py holds it equal to the shared data's)."""
    return Tokenizer.from_pretrained(SHIPPED_NEOX)


@pytest.mark.parametrize("text, ids", [
    ("\n", [187]),
    ("\n\n", [535]),
    ("This is an example.", [1552, 310, 271, 1650, 15]),
    ("Hello my name is", [12092, 619, 1416, 310]),
])
def test_neox_ids_match_the_published_ones(neox, text, ids):
    assert isinstance(neox, BpeTokenizer) and neox.vocab_size == 50277
    assert neox.encode(text) == ids
    assert neox.decode(ids) == text


def test_call_returns_int64_batch_of_one(neox):
    out = neox("This is an example.")
    assert out["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(out["input_ids"], [[1552, 310, 271, 1650, 15]])
    np.testing.assert_array_equal(out["attention_mask"], np.ones((1, 5)))


def test_batch_is_left_padded_with_a_mask(neox):
    out = neox(["This is an example.", "\n"])
    assert out["input_ids"].shape == (2, 5)
    np.testing.assert_array_equal(out["input_ids"][1], [neox.pad_token_id] * 4 + [187])
    np.testing.assert_array_equal(out["attention_mask"], [[1] * 5, [0] * 4 + [1]])
    assert neox(["ab", "c d e"], return_tensors=None)["input_ids"] == [neox.encode("ab"), neox.encode("c d e")]


def test_token_bytes_agree_with_the_tokenizers_library_for_every_id(neox):
    ids = range(neox.vocab_size)
    ours = [neox.decode([i]) for i in ids]
    theirs = [neox.backend.decode([i], skip_special_tokens=False) for i in ids]
    assert ours == theirs


@given(unicode_text)
def test_neox_round_trip_on_nfc_text(neox, text):
    # The tokenizer's normalizer is NFC: NFC text comes back unchanged.
    text = unicodedata.normalize("NFC", text)
    assert neox.decode(neox.encode(text)) == text


@given(unicode_text)
def test_byte_tokenizer_round_trip_on_any_text(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


@given(unicode_text)
def test_streaming_never_splits_a_character(neox, text):
    text = unicodedata.normalize("NFC", text)
    for tok in (neox, ByteTokenizer()):
        stream = StreamDecoder(tok)
        pieces = [stream.push([i]) for i in tok.encode(text)] + [stream.flush()]
        assert "".join(pieces) == text
        assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text


def test_stream_holds_a_partial_character_until_complete():
    stream = StreamDecoder(ByteTokenizer())
    emoji = list("🙂".encode("utf-8"))
    assert [stream.push([b]) for b in emoji] == ["", "", "", "🙂"]
    assert stream.push([0xE6]) == "" and stream.flush() == "\ufffd"  # a broken char ends as U+FFFD


def test_byte_model_directory_gets_the_byte_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 256, "hidden_size": 8, "num_hidden_layers": 1}))
    assert isinstance(Tokenizer.from_pretrained(tmp_path), ByteTokenizer)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"vocab_size": 1000, "hidden_size": 8, "num_hidden_layers": 1}))
    with pytest.raises(ModelFileError, match="tokenizer.json: not found"):
        Tokenizer.from_pretrained(tmp_path)


def test_malformed_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
