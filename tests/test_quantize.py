"""`rwkv-np quantize`: int8 files that load memory-mapped and compute exactly what load-time int8 does.

The file's layout is checked against a quantization computed here from its definition
(q = rint(W / s), s = max|W[i]| / 127 per row), not with rwkv_np's own quantizer; the malformed
files are written with test_errors' hand-written safetensors writer.
"""
from __future__ import annotations

import json
import mmap
import os
import struct

import numpy as np
import pytest

import rwkv_np
from conftest import random_state_dict
from rwkv_np import ModelFileError, RwkvConfig, RwkvForCausalLM, RwkvModel
from rwkv_np.cli import main
from rwkv_np.convert import convert, quantize, save_pretrained
from rwkv_np.storage import Int8Weight
from rwkv_np.v4.names import expected_shapes
from test_errors import CONFIG, _CODES, expect, run_cli, safetensors_bytes, safetensors_parts

IDS = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


def header_of(file) -> tuple[dict, int]:
    """(JSON header, offset of the data) of a safetensors file, parsed here from the format."""
    data = open(file, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8:8 + n]), 8 + n


def matrices(model) -> list[tuple[str, object]]:
    """(name, stored weight) of every matrix an RwkvForCausalLM multiplies by."""
    out = [("embeddings", model.rwkv.embeddings), ("head", model.head)]
    for i, blk in enumerate(model.rwkv.blocks):
        out += [(f"{i}.{f}", getattr(blk, f)) for f in ("att_key", "att_value", "att_receptance",
                                                         "att_output", "ffn_key", "ffn_receptance", "ffn_value")]
    return out


def mapped(a: np.ndarray) -> bool:
    """A read-only array whose memory belongs to a file's mmap (no copy anywhere down the chain)."""
    if a.flags.writeable or a.flags.owndata:
        return False
    while isinstance(a, np.ndarray):
        a = a.base
    return isinstance(a.obj if isinstance(a, memoryview) else a, mmap.mmap)  # frombuffer's memoryview


def run_both(a, b, ids=IDS):
    """Logits of a prompt, then of two single-token steps (token mode) with the state, for a and b."""
    outs = []
    for m in (a, b):
        out = m(ids)
        steps = [out.logits]
        for t in (7, 0):
            out = m(np.full((ids.shape[0], 1), t), state=out.state)
            steps.append(out.logits)
        outs.append(steps)
    return outs


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A random model (L=7 so rescale_every acts, odd I) saved as float32 and quantized."""
    src, dst = tmp_path_factory.mktemp("f32"), tmp_path_factory.mktemp("q")
    config = RwkvConfig(vocab_size=61, hidden_size=16, num_hidden_layers=7, intermediate_size=37)
    save_pretrained(src, config, random_state_dict(config, seed=5))
    quantize(src, dst)
    return src, dst


def test_logits_equal_load_time_int8(quantized):
    src, dst = quantized
    a, b = RwkvForCausalLM.from_pretrained(src, weights="int8"), RwkvForCausalLM.from_pretrained(dst)
    assert b.rwkv.token_layers is not None  # the single-token steps below run decode.py
    for x, y in zip(*run_both(a, b)):
        assert np.array_equal(x, y)
    trunk_a, trunk_b = RwkvModel.from_pretrained(src, weights="int8"), RwkvModel.from_pretrained(dst)
    assert np.array_equal(trunk_a(IDS).last_hidden_state, trunk_b(IDS).last_hidden_state)
    for dtype in ("float32", "float64"):  # asking for int8 again changes nothing
        a = RwkvForCausalLM.from_pretrained(src, dtype=dtype, weights="int8")
        b = RwkvForCausalLM.from_pretrained(dst, dtype=dtype, weights="int8")
        assert np.array_equal(a(IDS).logits, b(IDS).logits)


def test_matrices_stay_memory_mapped(quantized):
    src, dst = quantized
    for weights in (None, "int8"):
        model = RwkvForCausalLM.from_pretrained(dst, weights=weights)
        for name, w in matrices(model):
            assert isinstance(w, Int8Weight) and w.col_scale is None, name
            assert mapped(w.q) and mapped(w.row_scale), name
    # The check can fail: matrices quantized at load live in the process's own memory.
    assert not mapped(RwkvForCausalLM.from_pretrained(src, weights="int8").head.q)


def test_other_storages_dequantize(quantized):
    _, dst = quantized
    ref = {n: w.to_float32() for n, w in matrices(RwkvForCausalLM.from_pretrained(dst))}
    for dtype, weights in (("float32", "float32"), ("float64", None), ("float32", "float16")):
        model = RwkvForCausalLM.from_pretrained(dst, dtype=dtype, weights=weights)
        for name, w in matrices(model):
            assert isinstance(w, np.ndarray) and w.dtype == (weights or dtype), name
            np.testing.assert_array_equal(w, ref[name].astype(w.dtype))


def test_file_layout(quantized):
    src, dst = quantized
    header, start = header_of(dst / "model.safetensors")
    floats = {n: np.asarray(x) for n, x in rwkv_np.load.read(src)[2].items()}
    assert header.pop("__metadata__") == {"format": "pt", "rwkv_np.storage": "int8"}
    data = (dst / "model.safetensors").read_bytes()
    config = RwkvConfig.from_pretrained(dst)
    spans = []
    for name, shape in expected_shapes(config).items():
        e = header[name]
        if len(shape) == 2:  # every matrix: I8 plus float32 row scales, quantized as defined
            s = header[name + "_scale"]
            assert (e["dtype"], e["shape"], s["dtype"], s["shape"]) == ("I8", list(shape), "F32", [shape[0]])
            q = np.frombuffer(data, np.int8, np.prod(shape), start + e["data_offsets"][0]).reshape(shape)
            scale = np.frombuffer(data, "<f4", shape[0], start + s["data_offsets"][0])
            W = floats[name]
            want = np.abs(W).max(axis=1) / np.float32(127)
            np.testing.assert_array_equal(scale, want)
            np.testing.assert_array_equal(q, np.clip(np.rint(W / want[:, None]), -127, 127))
            spans.append((*s["data_offsets"], 4))
        else:
            assert e["dtype"] == "F32" and "_scale" not in name
        spans.append((*e["data_offsets"], 1 if len(shape) == 2 else 4))
    assert len(header) == len(spans)
    spans.sort()  # no holes (the format allows none), each tensor aligned to its item size
    assert spans[0][0] == 0 and all(e0 == b1 for (_, e0, _), (b1, _, _) in zip(spans, spans[1:]))
    assert all((start + b) % size == 0 for b, _, size in spans) and spans[-1][1] == len(data) - start
    from safetensors.numpy import load_file  # the format's own reader accepts the file
    assert load_file(dst / "model.safetensors")["head.weight"].dtype == np.int8


def test_demo_model_quantized(tmp_path):
    """The shipped demo model (F16 on disk): exact logits, token-mode steps and generations."""
    quantize(rwkv_np.DEMO_MODEL, tmp_path / "q")
    a = RwkvForCausalLM.from_pretrained(rwkv_np.DEMO_MODEL, weights="int8")
    b = RwkvForCausalLM.from_pretrained(tmp_path / "q")
    ids = np.frombuffer(b"ROMEO: What say you, my lord?", np.uint8)[None].astype(np.int64)
    for x, y in zip(*run_both(a, b, ids)):
        assert np.array_equal(x, y)
    for kwargs in ({}, {"do_sample": True, "top_p": 0.9, "seed": 3}):
        ga = a.generate(ids[:, :6], max_new_tokens=40, **kwargs)
        assert np.array_equal(ga, b.generate(ids[:, :6], max_new_tokens=40, **kwargs))
    # A quarter of the float32 file (the float32 rest, the row scales and the header add ~2%).
    convert(rwkv_np.DEMO_MODEL, tmp_path / "f32", dtype="float32")
    ratio = (tmp_path / "q" / "model.safetensors").stat().st_size / (tmp_path / "f32" / "model.safetensors").stat().st_size
    assert 0.25 <= ratio < 0.27, ratio


def test_tied_embeddings_and_round_trips(tmp_path):
    config = RwkvConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, tie_word_embeddings=True)
    save_pretrained(tmp_path / "f32", config, random_state_dict(config, seed=6))
    quantize(tmp_path / "f32", tmp_path / "q")
    header, _ = header_of(tmp_path / "q" / "model.safetensors")
    assert "head.weight" not in header and header["rwkv.embeddings.weight"]["dtype"] == "I8"
    b = RwkvForCausalLM.from_pretrained(tmp_path / "q")
    assert b.head is b.rwkv.embeddings
    a = RwkvForCausalLM.from_pretrained(tmp_path / "f32", weights="int8")
    assert np.array_equal(a(IDS % 40).logits, b(IDS % 40).logits)
    # Quantizing again or converting with dtype unset keeps the same int8 bytes; float32 dequantizes.
    quantize(tmp_path / "q", tmp_path / "q2")
    convert(tmp_path / "q", tmp_path / "q3")
    q = (tmp_path / "q" / "model.safetensors").read_bytes()
    assert (tmp_path / "q2" / "model.safetensors").read_bytes() == q == (tmp_path / "q3" / "model.safetensors").read_bytes()
    convert(tmp_path / "q", tmp_path / "deq", dtype="float32")
    c = RwkvForCausalLM.from_pretrained(tmp_path / "deq")
    np.testing.assert_array_equal(c.head, b.head.to_float32())


def test_cli_round_trip(tmp_path, capsys):
    q = str(tmp_path / "q")
    assert main(["quantize", rwkv_np.DEMO_MODEL, "--out", q]) == 0
    size = os.path.getsize(os.path.join(q, "model.safetensors")) / 2**20  # reports the real file
    assert f"int8 matrices, {size:.2f} MiB" in capsys.readouterr().out
    assert main(["info", "--model", q]) == 0
    info = capsys.readouterr().out  # the real parameter count: row scales are not parameters
    assert "1,352,448 in 114 tensors" in info and "float16 x70, int8 x44" in info, info
    args = ["generate", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]
    assert main([*args, "--model", q]) == 0
    ours = capsys.readouterr().out
    assert main([*args, "--model", rwkv_np.DEMO_MODEL, "--weights", "int8"]) == 0
    assert capsys.readouterr().out == ours


def test_tokenizer_file_is_copied(quantized, tmp_path):
    src, _ = quantized
    (tmp_path / "src").mkdir()
    for f in ("config.json", "model.safetensors"):
        (tmp_path / "src" / f).write_bytes((src / f).read_bytes())
    (tmp_path / "src" / "tokenizer.json").write_text('{"stand-in": true}')
    quantize(tmp_path / "src", tmp_path / "q")
    assert (tmp_path / "q" / "tokenizer.json").read_text() == '{"stand-in": true}'


@pytest.mark.parametrize("argv, fragment", [
    (["quantize", "/nonexistent/model", "--out", "{tmp}/q"], "no such file or directory"),
    (["quantize", "{src}", "--out", "{src}/config.json"], "cannot write"),
])
def test_cli_errors_are_one_line(quantized, tmp_path, argv, fragment):
    src, _ = quantized
    result = run_cli(*[a.format(tmp=tmp_path, src=src) for a in argv])
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr, result.stderr


# -- malformed int8 files (written by test_errors' writer, not rwkv_np's) ---------------------------

KEY = "rwkv.blocks.1.attention.key.weight"


def int8_tensors(**edits) -> dict:
    """The tiny test_errors model with KEY (and any matrix named in edits) int8: {name: array};
    an edit maps a name to an array, or to None to drop it."""
    tensors = random_state_dict(RwkvConfig.from_dict(CONFIG), seed=1)
    W = tensors[KEY]
    scale = np.abs(W).max(axis=1) / np.float32(127)
    tensors[KEY], tensors[KEY + "_scale"] = np.rint(W / scale[:, None]).astype(np.int8), scale
    tensors.update(edits)
    return {n: x for n, x in tensors.items() if x is not None}


LN = "rwkv.blocks.0.ln1.weight"
MIX = "rwkv.blocks.0.attention.time_mix_key"
MALFORMED = {
    "no_scale": (dict(**{KEY + "_scale": None}), f"I8 tensor {KEY} has no row scales {KEY}_scale"),
    "scale_shape": (dict(**{KEY + "_scale": np.ones(7, np.float32)}), "expected float32 (8,)"),
    "scale_2d": (dict(**{KEY + "_scale": np.ones((8, 1), np.float32)}), "expected float32 (8,)"),
    "scale_f16": (dict(**{KEY + "_scale": np.ones(8, np.float16)}), "are float16 (8,), expected float32"),
    "scale_zero": (dict(**{KEY + "_scale": np.array([1] * 7 + [0], np.float32)}), "hold 0.0 at index 7"),
    "scale_negative": (dict(**{KEY + "_scale": -np.ones(8, np.float32)}), "must be finite and > 0"),
    "scale_nan": (dict(**{KEY + "_scale": np.full(8, np.nan, np.float32)}), "hold nan at index 0"),
    "scale_inf": (dict(**{KEY + "_scale": np.full(8, np.inf, np.float32)}), "hold inf at index 0"),
    "int8_layer_norm": (dict(**{LN: np.ones(8, np.int8), LN + "_scale": np.ones(8, np.float32)}),
                        f"tensor {LN} is I8 with shape (8,); only matrices may be int8"),
    "int8_time_mix": (dict(**{MIX: np.ones((1, 1, 8), np.int8)}), f"tensor {MIX} is I8"),
    "stray_scale": (dict(**{"head.weight_scale": np.ones(16, np.float32)}),
                    "head.weight_scale looks like row scales, but head.weight is not I8"),
    "int8_wrong_shape": (dict(**{"head.weight": np.ones((17, 8), np.int8),
                                 "head.weight_scale": np.ones(17, np.float32)}),
                         "head.weight has shape (17, 8), the config implies (16, 8)"),
}


@pytest.fixture
def int8_dir(tmp_path):
    _CODES.setdefault(np.dtype(np.int8), "I8")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    return tmp_path


def test_hand_written_int8_file_loads(int8_dir):
    (int8_dir / "model.safetensors").write_bytes(safetensors_bytes(*safetensors_parts(int8_tensors())))
    w = RwkvForCausalLM.from_pretrained(int8_dir).rwkv.blocks[1].att_key
    assert isinstance(w, Int8Weight) and mapped(w.q)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_int8_file(int8_dir, case):
    edits, fragment = MALFORMED[case]
    (int8_dir / "model.safetensors").write_bytes(safetensors_bytes(*safetensors_parts(int8_tensors(**edits))))
    for allow in (False, True):  # a bad scale is refused even when NaN weights are allowed
        err = expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, int8_dir, allow_nonfinite=allow)
        assert str(int8_dir / "model.safetensors") in str(err) or str(int8_dir) in str(err)
