"""The one float32 -> bfloat16 rounding (storage.float32_to_bf16), used both when matrices are
stored as bfloat16 at load and when `rwkv-np convert --dtype bfloat16` writes a file.

Expected bits come from the definition (round to nearest, ties to even, on the top 16 bits of
the float32; NaN stays NaN), written out by hand; torch's .to(bfloat16), when installed, is the
independent check. An earlier rounding in the writer turned NaN 0x7FFFFFFF into -0.0 and
0xFFFFFFFF into +0.0 (the carry ran through the sign bit)."""
import numpy as np
import pytest

from rwkv_np.convert import save_pretrained
from rwkv_np.formats.safetensors import read_safetensors
from rwkv_np.storage import Bfloat16, float32_to_bf16, prepare_weight

CASES = {  # float32 bits -> bfloat16 bits
    0x00000000: 0x0000,   # +0.0
    0x80000000: 0x8000,   # -0.0 keeps its sign
    0x3F800000: 0x3F80,   # 1.0, exact
    0x3F808000: 0x3F80,   # 1.00390625: a tie, kept bit even -> down
    0x3F818000: 0x3F82,   # a tie with the kept bit odd -> up to even
    0x3F808001: 0x3F81,   # just above the tie -> up
    0x3F807FFF: 0x3F80,   # just below the tie -> down
    0x7F7FFFFF: 0x7F80,   # largest float32 rounds to +inf (bfloat16's max is smaller)
    0xFF7FFFFF: 0xFF80,   # and the most negative to -inf
    0x7F800000: 0x7F80,   # +inf
    0xFF800000: 0xFF80,   # -inf
    0x00000001: 0x0000,   # smallest subnormal -> +0.0
    0x80000001: 0x8000,   # -> -0.0
    0x00008000: 0x0000,   # a subnormal tie, kept bit even -> down
    0x00018000: 0x0002,   # a subnormal tie, kept bit odd -> up
    0x007FFFFF: 0x0080,   # largest subnormal rounds up to the smallest normal
}
NANS = [0x7FC00000, 0x7F800001, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFC00000, 0x7FBFFFFF]


def bits(values) -> np.ndarray:
    return np.array(values, np.uint32).view(np.float32)


def test_rounding_to_nearest_even_with_inf_signed_zero_and_subnormals():
    got = float32_to_bf16(bits(list(CASES)))
    np.testing.assert_array_equal(got, np.array(list(CASES.values()), np.uint16))


def test_nan_stays_nan_with_its_sign():
    got = float32_to_bf16(bits(NANS))
    widened = (got.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(widened).all()
    assert list(got >> 15) == [n >> 31 for n in NANS]


def test_load_and_convert_round_the_same_way(tmp_path):
    """prepare_weight (weights="bfloat16" at load) and the file writer give the same bits."""
    from rwkv_np import RwkvConfig
    from conftest import random_state_dict
    config = RwkvConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1)
    sd = random_state_dict(config)
    special = bits(list(CASES) + NANS)
    sd["head.weight"].reshape(-1)[:special.size] = special
    save_pretrained(tmp_path, config, sd, "bfloat16")
    written = read_safetensors(tmp_path / "model.safetensors")[0]["head.weight"]
    assert isinstance(written, Bfloat16)
    stored = prepare_weight(sd["head.weight"], "bfloat16")
    np.testing.assert_array_equal(written.view(np.ndarray), stored.view(np.ndarray))
    np.testing.assert_array_equal(written.view(np.ndarray).reshape(-1)[:len(CASES)],
                                  np.array(list(CASES.values()), np.uint16))


def test_agrees_with_torch():
    torch = pytest.importorskip("torch")
    x = np.concatenate([bits(list(CASES)), np.random.default_rng(0).normal(0, 10, 10000).astype(np.float32),
                        np.random.default_rng(1).integers(0, 2**32, 10000, dtype=np.uint32).view(np.float32)])
    theirs = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    ours = float32_to_bf16(x)
    finite = np.isfinite(x)
    np.testing.assert_array_equal(ours[finite], theirs[finite])
    assert np.isnan((ours[~np.isfinite(x) & np.isnan(x)].astype(np.uint32) << 16).view(np.float32)).all()
