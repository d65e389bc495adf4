"""int5 storage (storage_int4.py with bits=5, linear_int4.py's int5 kernels, `rwkv-np quantize
--bits 5`): the bit layout against a packer written here, the quantizer against plain min/max
rounding over 31 levels (rwkv.cpp Q5_1's), the kernels on every path against a float64 product
of the matrix the layout stands for, files that load memory-mapped, the CLI, and one small model
of each generation.

References come from the layout's definition (each row: in/2 bytes of low nibbles in int4's
order, then in/8 bytes of fifth bits, group g's 4 bytes a little-endian uint32 whose bit j
belongs to value j), not from the storage's own dequantizer."""
import dataclasses

import numpy as np
import pytest
from numba import njit

import rwkv_np
import rwkv_np.linear as lin
from conftest import random_state_dict
from rwkv_np import RwkvConfig, RwkvForCausalLM, gemm
from rwkv_np.cli import main
from rwkv_np.convert import convert, quantize, save_pretrained
from rwkv_np.linear import linear
from rwkv_np.linear_int4 import LEVELS, PAIRED, XQ, _group_dot5, pair_order, quantize_x
from rwkv_np.storage import Int8Weight, dequantize, embedding_rows, prepare_weight
from rwkv_np.storage_int4 import Int4Weight, quantize_int4
from rwkv_np.v4 import reference
from test_quantize import header_of, mapped, matrices, run_both


def f64(a):
    return np.asarray(a, dtype=np.float64)


def values(w: Int4Weight) -> np.ndarray:  # -> (out, in) int64 q in 0..31, from the layout's definition
    out, n = w.shape
    q = np.empty((out, n), np.int64)
    for g in range(n // 32):
        byte = w.q[:, 16 * g:16 * g + 16].astype(np.int64)
        q[:, 32 * g:32 * g + 16], q[:, 32 * g + 16:32 * g + 32] = byte & 15, byte >> 4
        word = w.q[:, n // 2 + 4 * g:n // 2 + 4 * g + 4].astype(np.int64) @ (256 ** np.arange(4))  # little-endian
        for j in range(32):
            q[:, 32 * g + j] += 16 * ((word >> j) & 1)
    return q


def unpack(w: Int4Weight) -> np.ndarray:  # -> (out, in) float64: d q + m
    dm = np.repeat(f64(w.scales), 32, axis=1)
    return dm[..., 0] * values(w) + dm[..., 1]


def pack(q: np.ndarray) -> np.ndarray:  # (out, in) values 0..31 -> (out, 5 in/8) uint8, byte by byte
    out, n = q.shape
    rows = []
    for i in range(out):
        low, high = bytearray(), bytearray()
        for g in range(n // 32):
            v = [int(t) for t in q[i, 32 * g:32 * g + 32]]
            low += bytes((v[j] & 15) | ((v[16 + j] & 15) << 4) for j in range(16))
            high += sum((v[j] >> 4) << j for j in range(32)).to_bytes(4, "little")
        rows.append(np.frombuffer(bytes(low + high), np.uint8))
    return np.stack(rows)


def x_rounding(w, x):  # as test_int4's, with the values centred on 15.5
    if x.shape[0] != 1 or x.dtype != np.float32:
        return 0.0
    step = np.abs(f64(x)).reshape(-1, 32).max(axis=1) / LEVELS
    centred = np.abs(values(w) - 15.5) * np.repeat(f64(w.scales[..., 0]), 32, axis=1)
    return 0.51 * (centred * np.repeat(step, 32)[None]).sum(axis=1)[None]


def check_product(y, x, w, rel=1e-5):
    D = unpack(w)
    ref = f64(x) @ D.T
    bound = rel * (np.abs(f64(x)) @ np.abs(D).T) + x_rounding(w, x) + 1e-30
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


def test_layout_is_the_described_one():
    """Weights that are exactly d q + m (each group holds 0 and 31, so d = 1, m = 0 and rounding
    loses nothing): the stored bytes are the packer's above, and both dequantizers give W back."""
    rng = np.random.default_rng(0)
    q = rng.integers(0, 32, (5, 96))
    q[:, ::32], q[:, 1::32] = 0, 31
    W = q.astype(np.float32)
    w = quantize_int4(W, 5)
    assert w.bits == 5 and w.storage == "int5" and w.shape == (5, 96) and w.q.shape == (5, 60)
    assert np.all(w.scales[..., 0] == 1) and np.all(w.scales[..., 1] == 0)
    assert np.array_equal(w.q, pack(q))
    assert np.array_equal(values(w), q) and np.array_equal(w.to_float32(), W)
    assert w.packed()[1] == 5 and Int4Weight(w.q, w.scales).bits == 5  # the shapes say int5


def test_quantizer_no_worse_than_min_max_over_31_levels():
    """Per group, the search's squared error is at most plain min/max rounding's (Q5_1's rule:
    d = (max - min) / 31, m = min, both float16), and less in total."""
    rng = np.random.default_rng(4)
    W = rng.standard_normal((64, 256)).astype(np.float32) * np.float32(0.02)
    W[3, 7] = 0.5
    w = quantize_int4(W, 5)
    got = ((unpack(w) - W) ** 2).reshape(64, 8, 32).sum(-1)
    g = f64(W).reshape(64, 8, 32)
    lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
    d, m = f64(((hi - lo) / 31).astype(np.float16)), f64(lo.astype(np.float16))
    plain = ((np.clip(np.rint((g - m) / d), 0, 31) * d + m - g) ** 2).sum(-1)
    assert np.all(got <= plain * (1 + 1e-6) + 1e-12)
    assert got.sum() < 0.9 * plain.sum()
    assert values(w).max() == 31 and values(w).min() == 0


SHAPES = [(37, 32), (5, 96), (70, 544), (3, 1056), (4, 768)]  # 1 / 3 / 17 / 33 / 24 groups


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("N", [1, 3, 8, 17, 40])  # integer matvec, widened rows, BLAS on widened blocks
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_match_float64_product(shape, N, dtype):
    rng = np.random.default_rng(N)
    W = rng.standard_normal(shape).astype(np.float32)
    W[:, :32] += 3  # a group far from zero: the minimum matters
    w = prepare_weight(W, "int5")
    assert isinstance(w, Int4Weight) and w.bits == 5 and w.shape == shape
    x = rng.standard_normal((N, shape[1])).astype(dtype)
    check_product(linear(x, w), x, w)


@njit
def _rows(Q, DM, xq, sx, xsum, xerr):
    y = np.empty(Q.shape[0], np.float32)
    for i in range(Q.shape[0]):
        y[i] = _group_dot5(Q, i, DM, xq, sx, xsum, xerr)
    return y


@pytest.mark.parametrize("dtype, levels", [(np.int8, 127), (np.int16, 32767)])  # VNNI / AVX2, or generic
@pytest.mark.parametrize("shape", SHAPES + [(9, 256)])
def test_integer_kernel_is_its_formula(dtype, levels, shape):
    """Both integer kernels compute sum_g d (sx (q . xq) + xerr) + m xsum with q in 0..31, and
    the activations' xerr is 15.5 x the rounding error of each group's sum."""
    if dtype == np.int8 and XQ != np.int8:
        pytest.skip("this CPU has neither AVX512-VNNI nor AVX2: no int8 x kernel")
    rng = np.random.default_rng(shape[0])
    w = prepare_weight(rng.standard_normal(shape).astype(np.float32), "int5")
    x = rng.standard_normal((1, shape[1])).astype(np.float32)
    _, xq, sx, xsum, xerr = quantize_x(x, True, dtype, levels, 15.5)
    kernel_x = xq.copy()  # as activations_int4 passes it: in pair order for AVX2's int8 kernel
    if dtype == np.int8 and PAIRED:
        pair_order(kernel_x)
    y = _rows(w.q, w.scales.view(np.uint16), kernel_x[0], sx[0], xsum[0], xerr[0])
    d, m = f64(w.scales[..., 0]), f64(w.scales[..., 1])
    isum = (values(w) * xq.astype(np.int64)).reshape(shape[0], -1, 32).sum(-1)
    want = (d * (f64(sx) * isum + f64(xerr)) + m * f64(xsum)).sum(-1)
    size = (np.abs(d) * (f64(sx) * np.abs(isum) + np.abs(f64(xerr))) + np.abs(m * f64(xsum))).sum(-1)
    assert np.all(np.abs(y - want) <= 1e-5 * size + 1e-30)
    np.testing.assert_allclose(xerr, 15.5 * (x.reshape(-1, 32).sum(1) - sx * xq.reshape(-1, 32).sum(1)),
                               rtol=1e-4, atol=15.5 * 32 * 1e-6 * np.abs(x).max())
    # the activations linear makes for the kind: int5's centre 15.5, int4's 7.5
    from rwkv_np.linear_int4 import activations_int4
    five, four = activations_int4(x, True, 5)[4], activations_int4(x, True, 4)[4]
    np.testing.assert_allclose(five, four * (15.5 / 7.5), rtol=1e-6)
    assert np.any(five != four)


def test_blocked_gemm_and_parallel_build_give_the_same_numbers(monkeypatch):
    rng = np.random.default_rng(3)
    w = prepare_weight(rng.standard_normal((300, 96)).astype(np.float32), "int5")
    x = rng.standard_normal((40, 96)).astype(np.float32)
    serial = [linear(x[:n], w) for n in (1, 3, 40)]
    monkeypatch.setattr(lin, "PARALLEL_MIN_WEIGHTS", 0)
    monkeypatch.setattr(gemm, "_BLOCK_BYTES", 4 * 96 * 7)  # prompts widen 7 rows at a time
    for n, want in zip((1, 3, 40), serial):
        got = linear(x[:n], w)
        if n == 40:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        else:
            np.testing.assert_array_equal(got, want)


def test_rows_not_whole_groups_stay_int8_and_embedding_rows():
    assert isinstance(prepare_weight(np.ones((4, 40), np.float32), "int5"), Int8Weight)
    E = quantize_int4(np.random.default_rng(5).standard_normal((50, 64)).astype(np.float32), 5)
    ids = np.array([[0, 49], [7, 7]])
    np.testing.assert_array_equal(embedding_rows(E, ids), unpack(E)[ids].astype(np.float32))


# -- whole models and files -------------------------------------------------------------------

CONFIG = RwkvConfig(vocab_size=53, hidden_size=64, num_hidden_layers=3, intermediate_size=96, rescale_every=2)
IDS = np.array([[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]])


@pytest.fixture(scope="module")
def int5_dir(tmp_path_factory):
    src, dst = tmp_path_factory.mktemp("f32"), tmp_path_factory.mktemp("q5")
    save_pretrained(src, CONFIG, random_state_dict(CONFIG, seed=7))
    quantize(src, dst, bits=5)
    return src, dst


def test_v4_prompts_and_token_steps_match_reference(int5_dir):
    """RWKV-4: the float64 reference on the matrices int5 stands for (embedding, head int8):
    prompts within float32 rounding and the int8 head's rounding of x (16 rows: up to
    linear.SMALL_N, x is rounded as in token steps; measured 3.1e-5), B = 1 token steps within
    test_int4's bound for rounded x."""
    src, dst = int5_dir
    model = RwkvForCausalLM.from_pretrained(src, weights="int5")
    assert isinstance(model.head, Int8Weight) and isinstance(model.rwkv.embeddings, Int8Weight)
    names = dict(att_key="attention.key", att_value="attention.value", att_receptance="attention.receptance",
                 att_output="attention.output", ffn_key="feed_forward.key",
                 ffn_receptance="feed_forward.receptance", ffn_value="feed_forward.value")
    stored = {"rwkv.embeddings.weight": f64(model.rwkv.embeddings.to_float32()), "head.weight": f64(model.head.to_float32())}
    for i, blk in enumerate(model.rwkv.blocks):
        for f, name in names.items():
            assert getattr(blk, f).storage == "int5"
            stored[f"rwkv.blocks.{i}.{name}.weight"] = unpack(getattr(blk, f))
    weights = {n: stored.get(n, x) for n, x in random_state_dict(CONFIG, seed=7).items()}
    ref = reference.forward(weights, CONFIG, IDS)["logits"]
    scale = np.abs(ref).max()
    assert np.abs(model(IDS).logits - ref).max() / scale < 3e-4
    state, steps = None, []
    for t in range(IDS.shape[1]):
        out = model(IDS[:1, t:t + 1], state=state)
        state, steps = out.state, steps + [out.logits]
    assert np.abs(np.concatenate(steps, 1) - ref[:1]).max() / scale < 3e-4 * 32767 / LEVELS
    # closer to float32 than int4 is (the point of a fifth bit)
    f32 = RwkvForCausalLM.from_pretrained(src, weights="float32")(IDS).logits
    q4 = RwkvForCausalLM.from_pretrained(src, weights="int4")(IDS).logits
    assert np.abs(model(IDS).logits - f32).max() < 0.75 * np.abs(q4 - f32).max()


def test_file_loads_mapped_and_round_trips(int5_dir, tmp_path):
    src, dst = int5_dir
    header, start = header_of(dst / "model.safetensors")
    assert header.pop("__metadata__") == {"format": "pt", "rwkv_np.storage": "int5"}
    key = "rwkv.blocks.0.feed_forward.value.weight"  # (64, 96): 3 groups a row, 60 bytes
    assert (header[key]["dtype"], header[key]["shape"]) == ("U8", [64, 60])
    assert (header[key + "_scale"]["dtype"], header[key + "_scale"]["shape"]) == ("F16", [64, 3, 2])
    data = (dst / "model.safetensors").read_bytes()
    q = np.frombuffer(data, np.uint8, 64 * 60, start + header[key]["data_offsets"][0]).reshape(64, 60)
    import rwkv_np.load
    w = quantize_int4(np.asarray(rwkv_np.load.read(src)[2][key], np.float32), 5)
    assert np.array_equal(q, w.q)
    a, b = RwkvForCausalLM.from_pretrained(src, weights="int5"), RwkvForCausalLM.from_pretrained(dst)
    for x, y in zip(*run_both(a, b)):
        assert np.array_equal(x, y)
    for weights in (None, "int5"):
        for name, m in matrices(RwkvForCausalLM.from_pretrained(dst, weights=weights)):
            if name not in ("embeddings", "head"):
                assert m.storage == "int5" and mapped(m.q) and mapped(m.scales), name
    c = RwkvForCausalLM.from_pretrained(dst, weights="int4")  # another storage: dequantized, then int4
    assert c.rwkv.blocks[0].att_key.storage == "int4"
    quantize(dst, tmp_path / "again", bits=5)
    convert(dst, tmp_path / "conv")
    for d in ("again", "conv"):
        assert (tmp_path / d / "model.safetensors").read_bytes() == data


def test_cli_bits_5(tmp_path, capsys):
    q = str(tmp_path / "q")
    assert main(["quantize", rwkv_np.DEMO_MODEL, "--out", q, "--bits", "5"]) == 0
    assert "int5 matrices" in capsys.readouterr().out
    args = ["generate", "ROMEO:", "--max-new-tokens", "30", "--seed", "1"]
    assert main([*args, "--model", q]) == 0
    ours = capsys.readouterr().out
    assert main([*args, "--model", rwkv_np.DEMO_MODEL, "--weights", "int5"]) == 0
    assert capsys.readouterr().out == ours


@pytest.mark.parametrize("variant", ["6.0", "5.2"])
def test_v5_v6_token_steps_match_reference(variant):
    from test_v56_decode import CONFIGS, GENERATION, model_of, rel_err, steps, stored
    model = model_of(variant, "int5")
    ids = np.random.default_rng(1).integers(0, CONFIGS[variant].vocab_size, (1, 9))
    ref = GENERATION[variant][1].forward(stored(variant, "int5"), CONFIGS[variant], ids)["logits"]
    assert rel_err(model(ids).logits, ref) < 3e-4  # 9 rows: the int8 head rounds x (linear.activations)
    assert rel_err(steps(model, ids)[0], ref) < 3e-4 * 32767 / LEVELS


def test_v7_prompt_and_steps_match_reference():
    from test_v7_model import MULTI, random_params
    from rwkv_np.v7 import reference as reference7
    from rwkv_np.v7.model import Rwkv7ForCausalLM
    config = dataclasses.replace(MULTI, hidden_size=64, num_heads=2, head_dim=32, intermediate_size=128)
    params = random_params(config)
    model = Rwkv7ForCausalLM(config, params, "float32", weights="int5")
    held = dict(params, **{"model.embeddings.weight": dequantize(model.embeddings),
                           "lm_head.weight": dequantize(model.head)})
    for i, lay in enumerate(model.layers):
        for field, name in (("r_proj", "attn.r_proj"), ("k_proj", "attn.k_proj"), ("v_proj", "attn.v_proj"),
                            ("o_proj", "attn.o_proj"), ("ffn_key", "ffn.key"), ("ffn_value", "ffn.value")):
            assert getattr(lay, field).storage == "int5"
            held[f"model.layers.{i}.{name}.weight"] = unpack(getattr(lay, field))
        for kind in "wagv":
            lora = getattr(lay, f"{kind}_lora")
            if lora is not None:
                held[f"model.layers.{i}.attn.{kind}_lora.lora.0.weight"] = dequantize(lora[0])
                held[f"model.layers.{i}.attn.{kind}_lora.lora.2.weight"] = dequantize(lora[1])
    ids = np.random.default_rng(2).integers(0, config.vocab_size, (1, 7))
    want = reference7.forward({k: np.asarray(v, np.float64) for k, v in held.items()}, config, ids)["logits"]
    scale = np.abs(want).max()
    assert np.abs(model(ids).logits - want).max() / scale < 3e-4  # int8 head and LoRAs: x rounded (7 rows)
    state, got = None, []
    for t in range(ids.shape[1]):
        out = model(ids[:, t:t + 1], state=state)
        state, got = out.state, got + [out.logits]
    assert np.abs(np.concatenate(got, 1) - want).max() / scale < 3e-4 * 32767 / LEVELS
