"""int4 storage (storage_int4.py, linear_int4.py, `rwkv-np quantize --bits 4`): the layout, the
quantizer's rounding, the kernels on every path against a float64 product of the matrix the
layout stands for, files that load memory-mapped with the load-time numbers, and one-line
errors for malformed int4 files.

References are computed here from the layout's definition (W = d q + m, q the low nibble of
byte 16 g + j for j < 16, the high nibble of byte 16 g + j - 16 after), not with the storage's
own dequantizer; the malformed files are written with test_errors' hand-written writer."""
import json

import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

import rwkv_np
import rwkv_np.linear as lin
from conftest import random_state_dict
from rwkv_np import ModelFileError, RwkvConfig, RwkvForCausalLM, gemm
from rwkv_np.cli import main
from rwkv_np.convert import convert, quantize, save_pretrained
from rwkv_np.linear import linear
from rwkv_np.linear_int4 import LEVELS, PAIRED, XQ, _group_dot, pair_order, quantize_x
from rwkv_np.storage import Int8Weight, embedding_rows, prepare_weight
from rwkv_np.storage_int4 import Int4Weight, quantize_int4
from rwkv_np.v4 import reference
from test_errors import _CODES, expect, safetensors_bytes, safetensors_parts
from test_quantize import header_of, mapped, matrices, run_both


def f64(a):
    return np.asarray(a, dtype=np.float64)


def nibbles(w: Int4Weight) -> np.ndarray:  # -> (out, in) int64 values q, from the layout's definition
    out, half = w.q.shape
    q = np.empty((out, 2 * half), np.int64)
    for g in range(half // 16):
        byte = w.q[:, 16 * g:16 * g + 16].astype(np.int64)
        q[:, 32 * g:32 * g + 16], q[:, 32 * g + 16:32 * g + 32] = byte & 15, byte >> 4
    return q


def unpack(w: Int4Weight) -> np.ndarray:  # -> (out, in) float64: d q + m
    dm = np.repeat(f64(w.scales), 32, axis=1)  # (out, in, 2)
    return dm[..., 0] * nibbles(w) + dm[..., 1]


def x_rounding(w, x):  # -> (N, out) bound on what rounding one float32 row of x adds
    """Each group of 32 of x is rounded on its own scale, x[j] ~= sx[g] xq[j], |xq| <= LEVELS
    (int8 with VNNI or AVX2, else int16): an element moves by at most half a step (0.51: the float
    product rounds too), and it meets d (q - 7.5) (the kernel adds d * 7.5 * the rounding
    error of the group's sum; the m terms take x's exact sums)."""
    if x.shape[0] != 1 or x.dtype != np.float32:
        return 0.0
    step = np.abs(f64(x)).reshape(-1, 32).max(axis=1) / LEVELS                      # (groups,)
    centred = np.abs(nibbles(w) - 7.5) * np.repeat(f64(w.scales[..., 0]), 32, axis=1)   # |d (q - 7.5)|
    return 0.51 * (centred * np.repeat(step, 32)[None]).sum(axis=1)[None]


def check_product(y, x, w, rel=1e-5):
    """|y - x @ D.T| <= rel |x| @ |D|.T + x_rounding, D the float64 matrix w stands for."""
    D = unpack(w)
    ref = f64(x) @ D.T
    bound = rel * (np.abs(f64(x)) @ np.abs(D).T) + x_rounding(w, x) + 1e-30
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


# Odd shapes: 1 / 3 / 17 / 33 groups (blocks of 16 groups and the rest), rows not a multiple of anything.
SHAPES = [(37, 32), (5, 96), (70, 544), (3, 1056)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("N", [1, 3, 8, 17, 40])  # matvec (integer), matmat, BLAS
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_float64_product(shape, N, dtype):
    rng = np.random.default_rng(N)
    w = prepare_weight(rng.standard_normal(shape).astype(np.float32), "int4")
    assert isinstance(w, Int4Weight) and w.shape == shape
    x = rng.standard_normal((N, shape[1])).astype(dtype)
    check_product(linear(x, w), x, w)


@given(out=st.integers(1, 40), groups=st.integers(1, 20), N=st.sampled_from([1, 2, 16, 17]),
       seed=st.integers(0, 2 ** 32 - 1), scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e4]))
def test_any_shape_any_path(out, groups, N, seed, scale):
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((out, 32 * groups)) * scale).astype(np.float32)
    W[:, :32] += np.float32(scale)  # a group far from zero: the minimum matters
    w = prepare_weight(W, "int4")
    x = rng.standard_normal((N, 32 * groups)).astype(np.float32)
    check_product(linear(x, w), x, w)


@njit
def _rows(Q, DM, xq, sx, xsum, xerr):  # every row through linear_int4._group_dot
    y = np.empty(Q.shape[0], np.float32)
    for i in range(Q.shape[0]):
        y[i] = _group_dot(Q, i, DM, xq, sx, xsum, xerr)
    return y


@pytest.mark.parametrize("dtype, levels", [(np.int8, 127), (np.int16, 32767)])  # VNNI / AVX2, or generic
@pytest.mark.parametrize("shape", SHAPES + [(9, 256), (4, 768)])
def test_integer_kernel_is_its_formula(dtype, levels, shape):
    """Both integer kernels (int8 x: vpdpbusd with AVX512-VNNI, else vpmaddubsw with AVX2;
    int16 x: generic pmaddwd) compute exactly sum_g d (sx (q . xq) + xerr) + m xsum, up to float32 rounding."""
    if dtype == np.int8 and XQ != np.int8:
        pytest.skip("this CPU has neither AVX512-VNNI nor AVX2: no int8 x kernel")
    rng = np.random.default_rng(shape[0])
    w = prepare_weight(rng.standard_normal(shape).astype(np.float32), "int4")
    x = rng.standard_normal((1, shape[1])).astype(np.float32)
    _, xq, sx, xsum, xerr = quantize_x(x, True, dtype, levels)
    assert xq.dtype == dtype and np.abs(xq).max() == levels
    kernel_x = xq.copy()  # as activations_int4 passes it: in pair order for AVX2's int8 kernel
    if dtype == np.int8 and PAIRED:
        pair_order(kernel_x)
    y = _rows(w.q, w.scales.view(np.uint16), kernel_x[0], sx[0], xsum[0], xerr[0])
    d, m = f64(w.scales[..., 0]), f64(w.scales[..., 1])
    isum = (nibbles(w) * xq.astype(np.int64)).reshape(shape[0], -1, 32).sum(-1)   # (out, groups)
    want = (d * (f64(sx) * isum + f64(xerr)) + m * f64(xsum)).sum(-1)
    size = (np.abs(d) * (f64(sx) * np.abs(isum) + np.abs(f64(xerr))) + np.abs(m * f64(xsum))).sum(-1)
    assert np.all(np.abs(y - want) <= 1e-5 * size + 1e-30)
    # and x ~= sx * xq within half a step, group by group; xerr is 7.5 x the sums' difference
    np.testing.assert_array_less(np.abs(x - np.repeat(sx, 32)[None] * xq), 0.51 * np.repeat(sx, 32)[None] + 1e-30)
    np.testing.assert_allclose(xerr, 7.5 * (x.reshape(-1, 32).sum(1) - sx * xq.reshape(-1, 32).sum(1)),
                               rtol=1e-4, atol=7.5 * 32 * 1e-6 * np.abs(x).max())  # float32 sums


def test_parallel_build_and_blocked_gemm_give_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(3)
    w = prepare_weight(rng.standard_normal((300, 96)).astype(np.float32), "int4")
    x = rng.standard_normal((40, 96)).astype(np.float32)
    serial = [linear(x[:n], w) for n in (1, 3, 40)]
    monkeypatch.setattr(lin, "PARALLEL_MIN_WEIGHTS", 0)
    monkeypatch.setattr(gemm, "_BLOCK_BYTES", 4 * 96 * 7)  # prompts widen 7 rows at a time
    for n, want in zip((1, 3, 40), serial):
        got = linear(x[:n], w)
        if n == 40:  # BLAS may add in another order per block
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        else:
            np.testing.assert_array_equal(got, want)


def test_nan_and_zero_activations():
    w = prepare_weight(np.ones((4, 64), np.float32), "int4")
    assert np.all(linear(np.zeros((1, 64), np.float32), w) == 0)
    x = np.ones((1, 64), np.float32)
    x[0, 5] = np.nan
    assert np.all(np.isnan(linear(x, w)))


def test_layout_by_hand():
    W = np.zeros((1, 64), np.float32)
    W[0, :32] = np.arange(32) % 16          # group 0: 0..15, 0..15 -> d = 1, m = 0
    W[0, 32:] = 0.5                         # group 1: constant -> d = 0, m = 0.5, exact
    w = quantize_int4(W)
    assert w.q.shape == (1, 32) and w.scales.shape == (1, 2, 2) and w.scales.dtype == np.float16
    assert list(w.scales[0, 0]) == [1, 0] and list(w.scales[0, 1]) == [0, 0.5]
    assert list(w.q[0, :16]) == [j | (j << 4) for j in range(16)]  # value j (low), value 16 + j (high)
    assert np.array_equal(unpack(w), W) and np.array_equal(w.to_float32(), W)


def test_quantizer_rounds_each_group_no_worse_than_min_max():
    """The search keeps, per group, the (d, m) of least squared error, which includes min/max
    rounding with d = (max - min) / 15 and m = min as stored (float16)."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((64, 256)).astype(np.float32) * np.float32(0.02)
    W[3, 7] = 0.5  # an outlier: the search should cut the range
    w = quantize_int4(W)
    got = ((unpack(w) - W) ** 2).reshape(64, 8, 32).sum(-1)
    g = f64(W).reshape(64, 8, 32)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    d, m = f64(((hi - lo) / 15).astype(np.float16)), f64(lo.astype(np.float16))
    plain = ((np.clip(np.rint((g - m) / d), 0, 15) * d + m - g) ** 2).sum(-1)
    assert np.all(got <= plain * (1 + 1e-6) + 1e-12)
    assert got.sum() < 0.9 * plain.sum()  # and usually better: 5-15% less error here
    q = np.concatenate([w.q.reshape(64, 8, 16) & 15, w.q.reshape(64, 8, 16) >> 4], -1)
    assert q.max() == 15 and q.min() == 0


def test_rows_that_are_not_whole_groups_stay_int8():
    w = prepare_weight(np.ones((4, 40), np.float32), "int4")
    assert isinstance(w, Int8Weight)
    with pytest.raises(ValueError, match="float16"):
        quantize_int4(np.full((1, 32), 1e6, np.float32))


def test_embedding_rows():
    rng = np.random.default_rng(5)
    E = quantize_int4(rng.standard_normal((50, 64)).astype(np.float32))
    ids = np.array([[0, 49], [7, 7]])
    np.testing.assert_array_equal(embedding_rows(E, ids), unpack(E)[ids].astype(np.float32))


# -- whole models and files -------------------------------------------------------------------

CONFIG = RwkvConfig(vocab_size=53, hidden_size=64, num_hidden_layers=3, intermediate_size=96,
                    rescale_every=2)
IDS = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


@pytest.fixture(scope="module")
def int4_dir(tmp_path_factory):
    src, dst = tmp_path_factory.mktemp("f32"), tmp_path_factory.mktemp("q4")
    save_pretrained(src, CONFIG, random_state_dict(CONFIG, seed=7))
    quantize(src, dst, bits=4)
    return src, dst


def test_token_steps_and_prompts_match_reference(int4_dir):
    """The float64 reference on the matrices int4 storage stands for (embedding and head int8):
    the prompt (16 rows) and B = 2 token steps within 3e-4, for the int8 head rounds x to int16
    up to linear.SMALL_N rows (measured 3.4e-5; the int4 matrices multiply floats there), and
    B = 1, where x is rounded before each product, within 3e-4 x (32767 / LEVELS): the rounding
    step's size (int16 x: 1.1e-4 measured; int8 x per group, with VNNI or AVX2: 2.9e-2 on these random
    weights, whose activations are large; on the demo model it moves the KL to float32 by 1%)."""
    src, _ = int4_dir
    model = RwkvForCausalLM.from_pretrained(src, weights="int4")
    assert isinstance(model.head, Int8Weight) and isinstance(model.rwkv.embeddings, Int8Weight)
    stored = {"rwkv.embeddings.weight": model.rwkv.embeddings, "head.weight": model.head}
    for i, blk in enumerate(model.rwkv.blocks):
        assert isinstance(blk.ffn_value, Int4Weight)
        for f, name in (("att_key", "attention.key"), ("att_value", "attention.value"),
                        ("att_receptance", "attention.receptance"), ("att_output", "attention.output"),
                        ("ffn_key", "feed_forward.key"), ("ffn_receptance", "feed_forward.receptance"),
                        ("ffn_value", "feed_forward.value")):
            stored[f"rwkv.blocks.{i}.{name}.weight"] = getattr(blk, f)
    weights = {n: (unpack(stored[n]) if isinstance(stored[n], Int4Weight) else f64(stored[n].to_float32()))
               if n in stored else x for n, x in random_state_dict(CONFIG, seed=7).items()}
    ref = reference.forward(weights, CONFIG, IDS)["logits"]
    scale = np.abs(ref).max()
    assert np.abs(model(IDS).logits - ref).max() / scale < 3e-4
    for B in (1, 2):
        state, steps = None, []
        for t in range(IDS.shape[1]):
            out = model(IDS[:B, t:t + 1], state=state)
            state, steps = out.state, steps + [out.logits]
        assert np.abs(np.concatenate(steps, 1) - ref[:B]).max() / scale < (3e-4 * 32767 / LEVELS if B == 1 else 3e-4)


def test_file_loads_mapped_with_the_load_time_numbers(int4_dir):
    src, dst = int4_dir
    a, b = RwkvForCausalLM.from_pretrained(src, weights="int4"), RwkvForCausalLM.from_pretrained(dst)
    assert b.rwkv.token_layers is not None
    for x, y in zip(*run_both(a, b)):
        assert np.array_equal(x, y)
    for weights in (None, "int4"):
        for name, w in matrices(RwkvForCausalLM.from_pretrained(dst, weights=weights)):
            if name in ("embeddings", "head"):
                assert isinstance(w, Int8Weight) and mapped(w.q), name
            else:
                assert isinstance(w, Int4Weight) and mapped(w.q) and mapped(w.scales), name
    c = RwkvForCausalLM.from_pretrained(dst, weights="float32")  # other storages dequantize
    np.testing.assert_array_equal(c.rwkv.blocks[0].att_key, unpack(b.rwkv.blocks[0].att_key).astype(np.float32))


def test_file_layout_and_round_trips(int4_dir, tmp_path):
    src, dst = int4_dir
    header, start = header_of(dst / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt", "rwkv_np.storage": "int4"}
    key = "rwkv.blocks.0.feed_forward.value.weight"  # (64, 96): 3 groups a row
    assert (header[key]["dtype"], header[key]["shape"]) == ("U8", [64, 48])
    assert (header[key + "_scale"]["dtype"], header[key + "_scale"]["shape"]) == ("F16", [64, 3, 2])
    for name in ("head.weight", "rwkv.embeddings.weight"):
        assert header[name]["dtype"] == "I8" and header[name + "_scale"]["dtype"] == "F32"
    data = (dst / "model.safetensors").read_bytes()
    q = np.frombuffer(data, np.uint8, 64 * 48, start + header[key]["data_offsets"][0]).reshape(64, 48)
    dm = np.frombuffer(data, "<f2", 64 * 6, start + header[key + "_scale"]["data_offsets"][0]).reshape(64, 3, 2)
    w = quantize_int4(rwkv_np_float(src, key))
    assert np.array_equal(q, w.q) and np.array_equal(dm, w.scales)
    # Quantizing again, or converting with dtype unset, keeps the bytes; float32 dequantizes.
    quantize(dst, tmp_path / "again", bits=4)
    convert(dst, tmp_path / "conv")
    for d in ("again", "conv"):
        assert (tmp_path / d / "model.safetensors").read_bytes() == data
    from safetensors.numpy import load_file  # the format's own reader accepts the file
    assert load_file(dst / "model.safetensors")[key].dtype == np.uint8


def rwkv_np_float(directory, name):
    import rwkv_np.load
    return np.asarray(rwkv_np.load.read(directory)[2][name], np.float32)


def test_cli_bits_4(tmp_path, capsys):
    """The demo model through `rwkv-np quantize --bits 4`: the text of `--weights int4`."""
    q = str(tmp_path / "q")
    assert main(["quantize", rwkv_np.DEMO_MODEL, "--out", q, "--bits", "4"]) == 0
    assert "int4 matrices" in capsys.readouterr().out
    args = ["generate", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]
    assert main([*args, "--model", q]) == 0
    ours = capsys.readouterr().out
    assert main([*args, "--model", rwkv_np.DEMO_MODEL, "--weights", "int4"]) == 0
    assert capsys.readouterr().out == ours


# -- malformed int4 files (written by test_errors' writer, not rwkv_np's) --------------------------

KEY = "rwkv.blocks.1.attention.key.weight"  # (64, 64): 2 groups a row


def int4_tensors(**edits) -> dict:
    tensors = random_state_dict(CONFIG, seed=1)
    w = quantize_int4(tensors[KEY])
    tensors[KEY], tensors[KEY + "_scale"] = w.q, w.scales
    tensors.update(edits)
    return {n: x for n, x in tensors.items() if x is not None}


def scales(**at) -> np.ndarray:  # valid (64, 2, 2) float16 scales with some entries replaced
    s = np.ones((64, 2, 2), np.float16)
    for index, value in at.items():
        s[tuple(int(i) for i in index[1:].split("_"))] = value
    return s


MALFORMED = {
    "no_scales": ({KEY + "_scale": None}, f"int4 tensor {KEY} has no scales {KEY}_scale"),
    "scales_f32": ({KEY + "_scale": np.ones((64, 2, 2), np.float32)}, "are float32 (64, 2, 2), expected float16 (64, 2, 2)"),
    "scales_shape": ({KEY + "_scale": np.ones((64, 2), np.float16)}, "expected float16 (64, 2, 2)"),
    "scale_negative": ({KEY + "_scale": scales(_3_1_0=-1)}, "scale of group 7 of"),
    "scale_nan": ({KEY + "_scale": scales(_0_0_0=np.nan)}, "scale of group 0"),
    "minimum_inf": ({KEY + "_scale": scales(_0_1_1=np.inf)}, "minimum of group 1"),
    "u8_vector": ({"rwkv.blocks.0.ln1.weight": np.ones(64, np.uint8)}, "only int4 matrices"),
    "u8_odd_columns": ({KEY: np.ones((64, 31), np.uint8)}, "with in a multiple of 32"),
    "u8_wrong_shape": ({KEY: np.ones((63, 32), np.uint8)}, "expected float16 (63, 2, 2)"),
    "u8_layer_norm": ({"rwkv.blocks.0.ln1.weight": np.ones((1, 32), np.uint8),
                       "rwkv.blocks.0.ln1.weight_scale": np.ones((1, 2, 2), np.float16)},
                      "rwkv.blocks.0.ln1.weight has shape (1, 64), the config implies (64,)"),
    "stray_scales": ({"head.weight_scale": np.ones((53, 2, 2), np.float16)}, "but head.weight is not I8 or U8"),
}


@pytest.fixture
def config_dir(tmp_path):
    _CODES.setdefault(np.dtype(np.uint8), "U8")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    return tmp_path


def test_hand_written_int4_file_loads(config_dir):
    (config_dir / "model.safetensors").write_bytes(safetensors_bytes(*safetensors_parts(int4_tensors())))
    w = RwkvForCausalLM.from_pretrained(config_dir).rwkv.blocks[1].att_key
    assert isinstance(w, Int4Weight) and mapped(w.q) and mapped(w.scales)


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_int4_file(config_dir, case):
    edits, fragment = MALFORMED[case]
    (config_dir / "model.safetensors").write_bytes(safetensors_bytes(*safetensors_parts(int4_tensors(**edits))))
    for allow in (False, True):  # a bad scale is refused even when NaN weights are allowed
        expect(ModelFileError, fragment, RwkvForCausalLM.from_pretrained, config_dir, allow_nonfinite=allow)
