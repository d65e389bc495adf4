"""rwkv.cpp's quantized files (Q5_0, Q5_1, Q8_0, file version 101) dequantize to ggml's values.

References independent of rwkv_np.rwkvcpp: the FP32 file of the same model quantized again in
this file by ggml's rules (blocks of 32 along the innermost dimension; Q5_1: d = (max-min)/31,
m = min, q = floor((x-min)/d + 0.5); Q5_0: d = signed absmax / -16, q = floor(x/d + 16.5)
clamped to 31; Q8_0: d = absmax/127, q = round(x/d)), and rwkv.cpp's expected logits.
"""
import struct

import numpy as np
import pytest

from rwkv_np import ModelFileError, RwkvForCausalLM
from rwkv_np.load import load
from rwkv_np.v4.names import hf_name

PROMPT = [34, 105, 110]  # the bytes of '"in', as in rwkv.cpp's test
MODEL = "tiny-rwkv-4v0-660K-{}.bin"


def f16(x):
    return np.asarray(x, np.float32).astype(np.float16)


def quantize(x, kind):  # x (n*32,) float32 -> (bytes of ggml blocks, the values they stand for)
    """ggml's reference quantizers, written from the format description (not from rwkv_np)."""
    b = x.reshape(-1, 32).astype(np.float32)                                   # (n, 32)
    safe = lambda d: np.where(d == 0, 1, d)
    if kind == 9:  # Q8_0
        d = np.abs(b).max(1, keepdims=True) / 127
        q = np.round(b / safe(d)).astype(np.int8)
        blob = np.concatenate([f16(d).view(np.uint8), q.view(np.uint8)], axis=1)
        return blob.tobytes(), (q * f16(d).astype(np.float32)).reshape(-1)
    if kind == 8:  # Q5_1
        lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
        d = (hi - lo) / 31
        q = np.clip(np.floor((b - lo) / safe(d) + 0.5), 0, 31).astype(np.uint32)
        head = np.concatenate([f16(d).view(np.uint8), f16(lo).view(np.uint8)], axis=1)
        values = q * f16(d).astype(np.float32) + f16(lo).astype(np.float32)
    else:  # Q5_0
        amax_signed = np.take_along_axis(b, np.abs(b).argmax(1)[:, None], 1)
        d = amax_signed / -16
        q = np.minimum(31, np.floor(b / safe(d) + 16.5)).astype(np.uint32)
        head = f16(d).view(np.uint8)
        values = (q.astype(np.float32) - 16) * f16(d).astype(np.float32)
    qh = ((q >> 4) << np.arange(32, dtype=np.uint32)).sum(1, dtype=np.uint32)    # bit j = q_j's 5th bit
    qs = ((q[:, :16] & 15) | ((q[:, 16:] & 15) << 4)).astype(np.uint8)           # j and j+16 share a byte
    blob = np.concatenate([head, qh.astype("<u4")[:, None].view(np.uint8), qs], axis=1)
    return blob.tobytes(), values.reshape(-1)


def requantized_file(src, dst, kind, version=101):
    """Copy an F32 rwkv.cpp file, quantizing every 2-D matrix except emb and head (as rwkv.cpp
    does); returns {BlinkDL name: dequantized values} of what was written."""
    data = src.read_bytes()
    header = list(struct.unpack_from("<6i", data))
    header[1], header[5] = version, kind
    parts, expected, off = [struct.pack("<6i", *header)], {}, 24
    while off < len(data):
        n_dims, name_len, typ = struct.unpack_from("<3i", data, off)
        dims = struct.unpack_from(f"<{n_dims}i", data, off + 12)
        name = data[off + 12 + 4 * n_dims: off + 12 + 4 * n_dims + name_len]
        start = off + 12 + 4 * n_dims + name_len
        count = int(np.prod(dims))
        x = np.frombuffer(data, "<f4", count, start)
        off = start + 4 * count
        if n_dims == 2 and name not in (b"emb.weight", b"head.weight"):
            blob, values = quantize(x, kind)
            expected[name.decode()] = values.reshape(dims[::-1])
            typ = kind
        else:
            blob = x.tobytes()
        parts.append(struct.pack(f"<3i{n_dims}i", n_dims, name_len, typ, *dims) + name + blob)
    dst.write_bytes(b"".join(parts))
    return expected


def last_logits(config, tensors):
    return RwkvForCausalLM(config, tensors, "float32")([PROMPT]).logits[0, -1]


def test_q5_1_file_dequantizes_to_ggml_values_of_the_fp32_weights(shared_data, tmp_path):
    """rwkv.cpp's own Q5_1 file equals the FP32 file quantized by ggml's rule, value for value."""
    d = shared_data / "rwkvcpp"
    _, ref = load(d / MODEL.format("FP32"))[1:]
    _, q51 = load(d / MODEL.format("Q5_1"))[1:]
    expected = requantized_file(d / MODEL.format("FP32"), tmp_path / "q.bin", 8)
    assert len(expected) == 4 * 7
    for name, values in expected.items():
        key = hf_name(name)
        assert q51[key].dtype == np.float32
        np.testing.assert_array_equal(q51[key], values, err_msg=key)
    assert np.array_equal(q51["head.weight"], ref["head.weight"])  # kept in F32 by rwkv.cpp


def test_q5_1_model_logits_error_is_stated(shared_data):
    """Q5_1 costs max|dlogit| = 0.0961 against rwkv.cpp's FP32 expected logits (measured with
    rwkv_np float32 and float64 alike), and keeps the same top token."""
    d = shared_data / "rwkvcpp"
    expected = np.fromfile(d / "expected-logits-4v0-660K.bin", "<f4")
    logits = last_logits(*load(d / MODEL.format("Q5_1"))[1:])
    err = np.abs(logits - expected).max()
    assert 0.05 < err < 0.12
    assert logits.argmax() == expected.argmax()


@pytest.mark.parametrize("kind, name, max_err", [(7, "Q5_0", 0.3), (8, "Q5_1", 0.3), (9, "Q8_0", 0.02)])
def test_requantized_files_load_with_the_written_values(shared_data, tmp_path, kind, name, max_err):
    d = shared_data / "rwkvcpp"
    expected = requantized_file(d / MODEL.format("FP32"), tmp_path / f"{name}.bin", kind)
    config, tensors = load(tmp_path / f"{name}.bin")[1:]
    np.testing.assert_array_equal(tensors["rwkv.blocks.2.feed_forward.key.weight"],
                                  expected["blocks.2.ffn.key.weight"])
    np.testing.assert_array_equal(tensors["rwkv.blocks.0.attention.output.weight"],
                                  expected["blocks.0.att.output.weight"])
    ref = np.fromfile(d / "expected-logits-4v0-660K.bin", "<f4")
    assert np.abs(last_logits(config, tensors) - ref).max() < max_err


def test_old_quantized_layout_is_refused(shared_data, tmp_path):
    requantized_file(shared_data / "rwkvcpp" / MODEL.format("FP32"), tmp_path / "old.bin", 8, version=100)
    with pytest.raises(ModelFileError, match=r"old.bin: .*Q5_1 in file version 100"):
        load(tmp_path / "old.bin")[1:]


def test_unknown_tensor_type_is_refused(shared_data, tmp_path):
    data = bytearray((shared_data / "rwkvcpp" / MODEL.format("FP32")).read_bytes())
    struct.pack_into("<i", data, 24 + 8, 5)  # first record's type: 5 (unused by rwkv.cpp)
    (tmp_path / "bad.bin").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=r"bad.bin: tensor .* has type 5"):
        load(tmp_path / "bad.bin")[1:]
