"""Every malformed input is refused with the documented error class and a message naming it.

Each case below builds its bad file (or bad argument) in tmp_path from a valid tiny model, then
asserts the class (ConfigError / ModelFileError / InputError, all RwkvError and so ValueError)
and a fragment of the message that names the problem. The writers here are written from the
format descriptions (RWKV4_SPEC.md), not with rwkv_np's own writers, so a bug shared by reader
and writer cannot hide.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES, REPO, random_state_dict
from rwkv_np import ConfigError, InputError, ModelFileError, RwkvConfig, RwkvError, RwkvForCausalLM
from rwkv_np.v4.names import expected_shapes

CONFIG = dict(vocab_size=16, hidden_size=8, num_hidden_layers=2, intermediate_size=12,
              context_length=64, model_type="rwkv")


# -- writers, from the format descriptions ----------------------------------------------------

_CODES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}


def safetensors_parts(tensors: dict) -> tuple[dict, bytes]:
    """(header dict, data bytes) of a safetensors file holding `tensors`, in sorted name order."""
    header, body = {"__metadata__": {"format": "pt"}}, b""
    for name in sorted(tensors):
        x = np.ascontiguousarray(tensors[name])
        header[name] = {"dtype": _CODES[x.dtype], "shape": list(x.shape),
                        "data_offsets": [len(body), len(body) + x.nbytes]}
        body += x.astype(x.dtype.newbyteorder("<")).tobytes()
    return header, body


def safetensors_bytes(header, body: bytes) -> bytes:
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


def write_model(directory: Path, tensors: dict | None = None, config: dict | None = None) -> Path:
    """A valid HF-layout model directory (config.json + model.safetensors) unless told otherwise."""
    directory.mkdir(parents=True, exist_ok=True)
    cfg = dict(CONFIG if config is None else config)
    if tensors is None:
        tensors = random_state_dict(RwkvConfig.from_dict(cfg), seed=1)
    (directory / "config.json").write_text(json.dumps(cfg))
    (directory / "model.safetensors").write_bytes(safetensors_bytes(*safetensors_parts(tensors)))
    return directory


def blinkdl_name(hf: str) -> str:
    """HF name -> the BlinkDL name rwkv.cpp files use."""
    name = hf.removeprefix("rwkv.").replace("embeddings.", "emb.").replace("pre_ln", "ln0")
    name = name.replace(".attention.", ".att.").replace(".feed_forward.", ".ffn.")
    for long, short in (("key", "k"), ("value", "v"), ("receptance", "r")):
        if name.endswith("time_mix_" + long):
            name = name[:-len(long)] + short
    return name


def rwkvcpp_bytes(config: dict = CONFIG, tensors: dict | None = None, header: tuple | None = None) -> bytes:
    """An rwkv.cpp RWKV-4 FP32 file: 6 int32 header, then per tensor n_dims, name length, type 0,
    the sizes innermost first, the name, the data; time_decay stored as -exp(decay), time_mix flat."""
    cfg = RwkvConfig.from_dict(config)
    if tensors is None:
        tensors = random_state_dict(cfg, seed=2)
    out = struct.pack("<6i", 0x67676D66, 100, cfg.vocab_size, cfg.hidden_size,
                      cfg.num_hidden_layers, 0) if header is None else struct.pack("<6i", *header)
    for hf, x in tensors.items():
        x = np.asarray(x, np.float32)
        if hf.endswith("time_decay"):
            x = -np.exp(x.astype(np.float64)).astype(np.float32)
        if "time_mix" in hf:
            x = x.reshape(-1)
        name = blinkdl_name(hf).encode()
        out += struct.pack(f"<3i{x.ndim}i", x.ndim, len(name), 0, *x.shape[::-1]) + name
        out += x.astype("<f4").tobytes()
    return out


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return write_model(tmp_path / "model")


def expect(cls, fragment: str, fn, *args, **kwargs):
    """Call fn and check that it raises `cls` (a RwkvError and a ValueError) naming `fragment`."""
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    assert isinstance(info.value, RwkvError) and isinstance(info.value, ValueError)
    assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"
    assert "\n" not in str(info.value), "an error message is one line"
    return info.value


# -- config.json ----------------------------------------------------------------------------------

def _set(**changes):
    return lambda d: (d / "config.json").write_text(json.dumps({**CONFIG, **changes}))


CONFIG_CASES = {
    "missing": (lambda d: (d / "config.json").unlink(), "needs config.json"),
    "not_json": (lambda d: (d / "config.json").write_text("{'hidden_size': 8"), "not valid JSON"),
    "not_utf8": (lambda d: (d / "config.json").write_bytes(b'{"a": "\xff\xfe"}'), "not valid JSON"),
    "json_list": (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object"),
    "a_directory": (lambda d: ((d / "config.json").unlink(), (d / "config.json").mkdir()), "cannot read"),
    "hidden_size_string": (_set(hidden_size="8"), "hidden_size must be a positive integer"),
    "hidden_size_zero": (_set(hidden_size=0), "hidden_size must be a positive integer"),
    "layers_negative": (_set(num_hidden_layers=-2), "num_hidden_layers must be a positive integer"),
    "vocab_float": (_set(vocab_size=16.5), "vocab_size must be a positive integer"),
    "vocab_null": (_set(vocab_size=None), "vocab_size must be a positive integer"),
    "eps_zero": (_set(layer_norm_epsilon=0), "layer_norm_epsilon"),
    "eps_string": (_set(layer_norm_epsilon="1e-5"), "layer_norm_epsilon"),
    "rescale_string": (_set(rescale_every="6"), "rescale_every must be an integer"),
    "tie_string": (_set(tie_word_embeddings="yes"), "tie_word_embeddings must be true or false"),
    "other_model_type": (_set(model_type="gpt2"), "model_type is 'gpt2'"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_bad_config(model_dir, case):
    corrupt, fragment = CONFIG_CASES[case]
    corrupt(model_dir)
    err = expect(ConfigError, fragment, RwkvForCausalLM.from_pretrained, model_dir)
    assert "config" in str(err)


def test_config_sizes_that_disagree_with_the_weights(model_dir):
    _set(intermediate_size=16)(model_dir)
    expect(ModelFileError, "feed_forward.key.weight has shape (12, 8), the config implies (16, 8)",
           RwkvForCausalLM.from_pretrained, model_dir)


# -- model.safetensors ----------------------------------------------------------------------------

def _rewrite(edit):
    """A case that edits the (header, body) of the valid model.safetensors and writes it back."""
    def corrupt(d):
        header, body = safetensors_parts(random_state_dict(RwkvConfig.from_dict(CONFIG), seed=1))
        result = edit(header, body)
        (d / "model.safetensors").write_bytes(result if isinstance(result, bytes) else safetensors_bytes(*result))
    return corrupt


def _entry(name="rwkv.ln_out.bias", **changes):
    def edit(header, body):
        header[name].update(changes)
        return header, body
    return _rewrite(edit)


def _drop(name):
    def edit(header, body):
        del header[name]
        return header, body
    return _rewrite(edit)


def _swap_tensor(name, x):
    def corrupt(d):
        tensors = random_state_dict(RwkvConfig.from_dict(CONFIG), seed=1)
        tensors[name] = x
        write_model(d, tensors)
    return corrupt


def _overlap(header, body):
    header["rwkv.ln_out.bias"]["data_offsets"] = list(header["rwkv.ln_out.weight"]["data_offsets"])
    return header, body


def _truncate(n):
    return lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:n])


LN = "rwkv.ln_out.bias"
SAFETENSORS_CASES = {
    "missing_file": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "empty_file": (_truncate(0), "too short for a safetensors file"),
    "seven_bytes": (_truncate(7), "too short for a safetensors file"),
    "header_past_eof": (_rewrite(lambda h, b: struct.pack("<Q", 10**6) + b"{}"), "exceeds the file"),
    "header_2_63": (_rewrite(lambda h, b: struct.pack("<Q", 2**63) + json.dumps(h).encode() + b),
                    "exceeds the file"),
    "header_not_json": (_rewrite(lambda h, b: safetensors_bytes(b"{not json", b)), "header is not valid JSON"),
    "header_deeply_nested": (_rewrite(lambda h, b: safetensors_bytes(b"[" * 100_000 + b"]" * 100_000, b)),
                             "header is not valid JSON"),
    "header_list": (_rewrite(lambda h, b: safetensors_bytes(b"[]", b)), "header is not a JSON object"),
    "truncated_body": (_rewrite(lambda h, b: (h, b[:-4])), "do not fit its size or the file"),
    "offsets_past_end": (_entry(data_offsets=[10**9, 10**9 + 32]), "do not fit its size or the file"),
    "offsets_wrong_size": (_entry(shape=[9]), "do not fit its size or the file"),
    "offsets_reversed": (_entry(data_offsets=[32, 0]), "do not fit"),
    "offsets_overlap": (_rewrite(_overlap), "overlap"),
    "offsets_one_number": (_entry(data_offsets=[0]), "malformed data_offsets"),
    "offsets_float": (_entry(data_offsets=[0.0, 32.0]), "malformed data_offsets"),
    "unknown_dtype": (_entry(dtype="F8_E4M3"), "unsupported dtype 'F8_E4M3'"),
    "dtype_missing": (_rewrite(lambda h, b: (h[LN].pop("dtype"), (h, b))[1]), "unsupported dtype None"),
    "shape_negative": (_entry(shape=[-8]), "malformed shape"),
    "shape_string": (_entry(shape="8"), "malformed shape"),
    "shape_overflows_int64": (_entry(shape=[2**32, 2**32, 2**32], data_offsets=[0, 0]), "do not fit"),
    "entry_not_object": (_rewrite(lambda h, b: ({**h, LN: [1, 2]}, b)), "malformed header entry"),
    "metadata_not_object": (_rewrite(lambda h, b: ({**h, "__metadata__": 3}, b)), "__metadata__"),
    "missing_tensor": (_drop(LN), "missing tensor rwkv.ln_out.bias"),
    "unexpected_tensor": (_swap_tensor("rwkv.blocks.2.ln1.weight", np.ones(8, np.float32)),
                          "unexpected tensor rwkv.blocks.2.ln1.weight"),
    "shape_vs_config": (_swap_tensor("head.weight", np.ones((17, 8), np.float32)),
                        "head.weight has shape (17, 8), the config implies (16, 8)"),
    "integer_weights": (_swap_tensor("rwkv.ln_out.weight", np.ones(8, np.int32)),
                        "rwkv.ln_out.weight has dtype int32, expected a floating-point type"),
    "nan_weight": (_swap_tensor("rwkv.blocks.1.attention.key.weight",
                                np.full((8, 8), np.nan, np.float32)),
                   "rwkv.blocks.1.attention.key.weight holds non-finite values"),
    "inf_float16_weight": (_swap_tensor("rwkv.blocks.0.ln2.bias", np.array([0] * 7 + [np.inf], np.float16)),
                           "rwkv.blocks.0.ln2.bias holds non-finite values (NaN or inf) at flat index 7"),
}


@pytest.mark.parametrize("case", SAFETENSORS_CASES)
def test_bad_safetensors(model_dir, case):
    corrupt, fragment = SAFETENSORS_CASES[case]
    corrupt(model_dir)
    err = expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, model_dir)
    assert str(model_dir) in str(err), "the message names the file"


def test_checkpoint_files_are_checked_for_nonfinite_weights(tmp_path):
    """from_pretrained on an rwkv.cpp file: a NaN weight is refused like in safetensors."""
    tensors = random_state_dict(RwkvConfig.from_dict(CONFIG), seed=2)
    tensors["rwkv.blocks.1.feed_forward.value.weight"][3, 4] = np.nan
    (tmp_path / "m.bin").write_bytes(rwkvcpp_bytes(tensors=tensors))
    expect(ModelFileError, "rwkv.blocks.1.feed_forward.value.weight holds non-finite values (NaN or inf) at "
           "flat index 40", RwkvForCausalLM.from_pretrained, tmp_path / "m.bin")
    RwkvForCausalLM.from_pretrained(tmp_path / "m.bin", allow_nonfinite=True)


def test_bf16_infinity_is_found(model_dir):
    """BF16 (stored as raw uint16 bits) needs its own non-finite test: exponent bits all ones."""
    header, body = safetensors_parts(random_state_dict(RwkvConfig.from_dict(CONFIG), seed=1))
    begin, end = header[LN]["data_offsets"]
    bits = np.full(8, 0x3F80, "<u2")  # 1.0
    bits[3] = 0xFF80                    # -inf
    header[LN].update(dtype="BF16", data_offsets=[begin, begin + 16])
    body = body[:begin] + bits.tobytes() + b"\0" * 16 + body[end:]
    (model_dir / "model.safetensors").write_bytes(safetensors_bytes(header, body))
    expect(ModelFileError, "rwkv.ln_out.bias holds non-finite values (NaN or inf) at flat index 3",
           RwkvForCausalLM.from_pretrained, model_dir)


def test_nonfinite_weights_load_when_allowed(model_dir):
    SAFETENSORS_CASES["nan_weight"][0](model_dir)
    model = RwkvForCausalLM.from_pretrained(model_dir, allow_nonfinite=True)
    assert np.isnan(model([1, 2]).logits).all()


# -- sharded checkpoints ---------------------------------------------------------------------------

def _shard(d: Path, weight_map, text: str | None = None) -> None:
    (d / "model.safetensors").rename(d / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": weight_map} if text is None else None
    (d / "model.safetensors.index.json").write_text(text if text is not None else json.dumps(index))


def _names():
    return list(expected_shapes(RwkvConfig.from_dict(CONFIG)))


SHARD_CASES = {
    "names_missing_shard": (lambda d: _shard(d, {**{n: "model-00001-of-00001.safetensors" for n in _names()},
                                                 LN: "model-00002-of-00002.safetensors"}),
                            "names shard 'model-00002-of-00002.safetensors', which is not in the directory"),
    "names_path_outside": (lambda d: _shard(d, {n: "../model-00001-of-00001.safetensors" for n in _names()}),
                           "names shard '../model-00001-of-00001.safetensors'"),
    "shard_name_not_string": (lambda d: _shard(d, {n: 1 for n in _names()}), "must be shard file names"),
    "index_not_json": (lambda d: _shard(d, None, "{"), "not a valid safetensors index"),
    "index_no_weight_map": (lambda d: _shard(d, None, '{"metadata": {}}'), "not a valid safetensors index"),
    "tensor_in_two_shards": (lambda d: (shutil.copy(d / "model.safetensors", d / "b.safetensors"),
                                        _shard(d, {"x": "model-00001-of-00001.safetensors", "y": "b.safetensors"})),
                             "appears in more than one shard"),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_bad_sharded_checkpoint(model_dir, case):
    corrupt, fragment = SHARD_CASES[case]
    corrupt(model_dir)
    expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, model_dir)


def test_valid_writers_load(model_dir, tmp_path):
    """The writers above make loadable files: so each failure above is the corruption's doing."""
    from rwkv_np.load import load
    RwkvForCausalLM.from_pretrained(model_dir)([1, 2, 3])
    _shard(model_dir, {n: "model-00001-of-00001.safetensors" for n in _names()})
    RwkvForCausalLM.from_pretrained(model_dir)
    (tmp_path / "ok.bin").write_bytes(rwkvcpp_bytes())
    config, tensors = load(tmp_path / "ok.bin")[1:]
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (16, 8, 2)
    RwkvForCausalLM(config, tensors)([1, 2, 3])


# -- rwkv.cpp .bin ----------------------------------------------------------------------------------

def _bin_with(**changes) -> bytes:
    tensors = random_state_dict(RwkvConfig.from_dict(CONFIG), seed=2)
    tensors.update(changes.get("tensors", {}))
    return rwkvcpp_bytes(tensors=tensors, header=changes.get("header"))


def _patch(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("<i", value) + data[offset + 4:]


_VALID_BIN = None


def valid_bin() -> bytes:
    global _VALID_BIN
    if _VALID_BIN is None:
        _VALID_BIN = rwkvcpp_bytes()
    return _VALID_BIN


# The first record starts at byte 24: n_dims at 24, name length at 28, type at 32, sizes at 36.
BIN_CASES = {
    "empty": (lambda: b"", "cannot read"),
    "short_header": (lambda: valid_bin()[:20], "too short for an rwkv.cpp model"),
    "bad_magic": (lambda: b"ggml" + valid_bin()[4:], "not an rwkv.cpp model"),
    "truncated_record_header": (lambda: valid_bin()[:24 + 8], "truncated tensor record at byte 24"),
    "truncated_data": (lambda: valid_bin()[:-3], "the file ends first"),
    "n_dims_9": (lambda: _patch(valid_bin(), 24, 9), "malformed tensor record at byte 24"),
    "name_length_huge": (lambda: _patch(valid_bin(), 28, 10**6), "malformed tensor record at byte 24"),
    "size_zero": (lambda: _patch(valid_bin(), 36, 0), "impossible shape"),
    "size_negative": (lambda: _patch(valid_bin(), 36, -5), "impossible shape"),
    "size_too_big": (lambda: _patch(valid_bin(), 36, 10**6), "the file ends first"),
    "unknown_type": (lambda: _patch(valid_bin(), 32, 5), "has type 5"),
    "header_more_layers": (lambda: _patch(valid_bin(), 16, 3), "missing tensors rwkv.blocks.2"),
    "header_10**9_layers": (lambda: _patch(valid_bin(), 16, 10**9), "missing tensors rwkv.blocks.2.*"),
    "header_fewer_layers": (lambda: _patch(valid_bin(), 16, 1), "unexpected tensor rwkv.blocks.1"),
    "header_zero_vocab": (lambda: _patch(valid_bin(), 8, 0), "impossible model"),
    "header_wrong_vocab": (lambda: _patch(valid_bin(), 8, 17), "the config implies (17, 8)"),
}


def _positive_decay() -> bytes:
    """rwkv.cpp stores w = -exp(decay) < 0; a w >= 0 has no decay (log(-w) would be NaN)."""
    data = bytearray(valid_bin())
    name = b"blocks.0.att.time_decay"
    at = data.index(name) + len(name)
    data[at:at + 32] = np.full(8, 0.5, "<f4").tobytes()
    return bytes(data)


BIN_CASES["header_wrong_embed"] = (lambda: _patch(valid_bin(), 12, 9), "has shape (16, 8), the config implies (16, 9)")
BIN_CASES["positive_time_decay"] = (_positive_decay, "time_decay holds values that are not < 0")


@pytest.mark.parametrize("case", BIN_CASES)
def test_bad_rwkvcpp_file(tmp_path, case):
    from rwkv_np.load import load
    make, fragment = BIN_CASES[case]
    path = tmp_path / "model.bin"
    path.write_bytes(make())
    err = expect(ModelFileError, fragment, load, path)
    assert str(path) in str(err)


# -- torch .pth (through convert.load_checkpoint, the path `rwkv-np convert` takes) ---------------

def _pth() -> bytes:
    return (FIXTURES / "pth" / "tiny.pth").read_bytes()


def _multi_disk(data: bytes) -> bytes:
    """Set 'total number of disks' in the zip64 end-of-central-directory locator to 2."""
    at = data.rindex(b"PK\x06\x07")
    return data[:at + 16] + struct.pack("<I", 2) + data[at + 20:]


PTH_CASES = {
    "not_a_zip": (lambda: b"\x80\x02}q\x00." * 4, "not a zip-format torch checkpoint, or a damaged one"),
    # A zip is found through the directory at its end: without it the file is no known format.
    "truncated_half": (lambda: _pth()[:len(_pth()) // 2], "not a zip-format torch checkpoint, or a damaged one"),
    "no_end_of_archive": (lambda: _pth()[:-22], "not a zip-format torch checkpoint, or a damaged one"),
    "local_header_magic": (lambda: b"XX" + _pth()[2:], "damaged zip archive"),
    "multi_disk": (lambda: _multi_disk(_pth()), "not a zip-format torch checkpoint, or a damaged one"),
}


@pytest.mark.parametrize("case", PTH_CASES)
def test_bad_pth(tmp_path, case):
    pytest.importorskip("rwkv_np.formats.pth")
    from rwkv_np.convert import load_checkpoint
    make, fragment = PTH_CASES[case]
    path = tmp_path / "model.pth"
    path.write_bytes(make())
    err = expect(ModelFileError, fragment, load_checkpoint, path)
    assert str(path) in str(err)


# -- API inputs ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return RwkvForCausalLM.from_pretrained(write_model(tmp_path_factory.mktemp("api") / "m"))


IDS_CASES = {
    "id_equal_to_vocab": ([1, 16], "token id 16 is outside the vocabulary [0, 16)"),
    "id_negative": ([[1, -1]], "token id -1 is outside the vocabulary [0, 16)"),
    "id_fraction": ([1.5, 2.0], "expected integer token ids, got dtype float64"),
    "id_nan": ([np.nan], "expected integer token ids"),
    "id_inf": ([np.inf], "expected integer token ids"),
    "id_string": (["1"], "expected integer token ids"),
    "id_bool": ([True, False], "expected integer token ids, got dtype bool"),
    "empty": ([], "expected a non-empty (B, T) or (T,) array"),
    "empty_rows": (np.zeros((2, 0), np.int64), "got shape (2, 0)"),
    "scalar": (3, "got shape ()"),
    "rank_3": (np.zeros((1, 2, 3), np.int64), "got shape (1, 2, 3)"),
    "ragged": ([[1, 2], [3]], "input_ids: not an array of token ids"),
}


@pytest.mark.parametrize("case", IDS_CASES)
def test_bad_input_ids(model, case):
    ids, fragment = IDS_CASES[case]
    err = expect(InputError, fragment, model, ids)
    assert "input_ids" in str(err)


def _state(model, B=1):
    return model([[1, 2]] * B).state


STATE_CASES = {
    "four_items": (lambda s: s[:4], "expected a list of 5 arrays [ffn_x, att_x, num, den, max], got 4 items"),
    "one_array": (lambda s: np.stack(s), "got ndarray"),
    "wrong_channels": (lambda s: s[:2] + [s[2][:, :4]] + s[3:], "state[2] (num): expected shape (1, 8, 2)"),
    "wrong_layers": (lambda s: [x[..., :1] for x in s], "state[0] (ffn_x): expected shape (1, 8, 2)"),
    "wrong_batch": (lambda s: [np.concatenate([x, x]) for x in s], "got (2, 8, 2)"),
    "integer_dtype": (lambda s: s[:4] + [s[4].astype(np.int64)], "state[4] (max): expected floating-point"),
    "complex_dtype": (lambda s: [s[0].astype(np.complex64)] + s[1:], "state[0] (ffn_x): expected floating-point"),
    "ragged_item": (lambda s: [[[1.0], [2.0, 3.0]]] + s[1:], "state[0] (ffn_x): not an array"),
    "none_item": (lambda s: s[:1] + [None] + s[2:], "state[1] (att_x): expected shape"),
}


@pytest.mark.parametrize("case", STATE_CASES)
def test_bad_state(model, case):
    bad, fragment = STATE_CASES[case]
    expect(InputError, fragment, model, [3], state=bad(_state(model)))


def test_state_for_another_batch_size(model):
    """A B=1 state with a B=2 input: the batch sizes must agree."""
    expect(InputError, "expected shape (2, 8, 2)", model, [[1], [2]], state=_state(model, B=1))


@pytest.mark.parametrize("labels, fragment", [
    ([[1, 16]], "labels: expected integer token ids in [0, 16) or -100"),
    ([[1, -5]], "labels: expected integer token ids in [0, 16) or -100"),
    ([[1.0, 2.0]], "labels: expected integer token ids"),
    ([[1, 2, 3]], "labels: expected shape (1, 2)"),
])
def test_bad_labels(model, labels, fragment):
    expect(InputError, fragment, model, [[1, 2]], labels=labels)


def test_bad_dtype(model_dir):
    expect(InputError, "dtype: expected one of ['float32', 'float64'], got 'float16'",
           RwkvForCausalLM.from_pretrained, model_dir, dtype="float16")


@pytest.mark.parametrize("option, fragment", [
    (dict(max_new_tokens=-1), "max_new_tokens: expected an integer >= 0, got -1"),
    (dict(max_new_tokens=2.5), "max_new_tokens: expected an integer >= 0"),
    (dict(do_sample=True, temperature=-0.5), "temperature: must be > 0 when sampling, got -0.5"),
    (dict(do_sample=True, temperature=0.0), "temperature: must be > 0 when sampling"),
    (dict(do_sample=True, top_p=0.0), "top_p: expected a number in (0, 1] or None, got 0.0"),
    (dict(do_sample=True, top_p=1.5), "top_p: expected a number in (0, 1] or None, got 1.5"),
    (dict(do_sample=True, top_k=-1), "top_k: expected an integer >= 1 or None, got -1"),
])
def test_bad_sampling_options(model, option, fragment):
    generation = pytest.importorskip("rwkv_np.generation")
    expect(InputError, fragment, generation.generate, model, [1, 2], **option)


# -- the command line --------------------------------------------------------------------------------

def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "rwkv_np", *map(str, args)], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)


CLI_CASES = {  # (corruption of a valid model directory, fragment of the one-line message)
    "config_missing": (CONFIG_CASES["missing"][0], "needs config.json"),
    "config_not_json": (CONFIG_CASES["not_json"][0], "not valid JSON"),
    "weights_truncated": (SAFETENSORS_CASES["truncated_body"][0], "do not fit"),
    "header_not_json": (SAFETENSORS_CASES["header_not_json"][0], "header is not valid JSON"),
    "no_directory": (lambda d: shutil.rmtree(d), "no such file or directory"),
}


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_reports_one_line_and_exits_2(model_dir, case):
    pytest.importorskip("rwkv_np.cli")
    corrupt, fragment = CLI_CASES[case]
    corrupt(model_dir)
    result = run_cli("info", "--model", model_dir)
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_cli_tokenizer_larger_than_the_model(model_dir, shared_data):
    """The GPT-NeoX tokenizer (50277 ids) on a 16-token model: refused, one line, exit 2."""
    pytest.importorskip("rwkv_np.cli")
    shutil.copy(shared_data / "20B_tokenizer.json", model_dir / "tokenizer.json")  # into tmp_path only
    result = run_cli("generate", "--model", model_dir, "Hello", "--max-new-tokens", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "vocabulary" in lines[0], result.stderr


def test_cli_debug_shows_the_traceback(model_dir):
    pytest.importorskip("rwkv_np.cli")
    CONFIG_CASES["missing"][0](model_dir)
    result = run_cli("info", "--model", model_dir, "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """save_pretrained (used by `rwkv-np convert`) writes to a temporary name and renames it:
    a write that fails midway (here: the disk 'fills' after 8 bytes) leaves no model file."""
    from rwkv_np import convert
    config = RwkvConfig.from_dict(CONFIG)
    real_open = open

    class DiskFull:
        def __init__(self, f):
            self.f = f
        def write(self, data):  # one call can be the whole file: fail it partway through
            self.f.write(bytes(data)[:8])
            raise OSError(28, "No space left on device")
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda file, mode="r", *a, **k: DiskFull(real_open(file, mode, *a, **k))
                        if "wb" in mode else real_open(file, mode, *a, **k))
    with pytest.raises(OSError):
        convert.save_pretrained(tmp_path / "out", config, random_state_dict(config))
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []
