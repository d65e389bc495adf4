"""Each weight storage keeps the demo model's predictions (issue 7): bounds on the max relative
logit error, top-1 agreement and KL(float32 || storage), measured by tools/quality.py on
4 windows x 512 bytes = 2,048 positions of real text, each from an empty state.

Text: held-out tinyshakespeare when ../shared/data has it, else the Apache-2.0 license text shipped
in rwkv_np/assets/rwkv-world/LICENSE (always present and never edited, so the test runs on CI too;
further from the training text, so errors are larger). It used README.md before, whose every edit
moved the figures: a README change took bfloat16's top-1 to 0.99463, under its 0.995 bound.
Measured on the license text: bfloat16 4.7e-3 / 0.9995 / 9.5e-6 / 1.3e-3, int8 1.8e-2 / 0.9956 /
1.3e-4 / 8.8e-3, int8 decode 1.8e-2 / 0.9971 / 1.5e-4 / 8.8e-3, int4 0.27 / 0.956 / 8.3e-3 / 0.77,
int4 decode 0.26 / 0.958 / 8.1e-3 / 0.73, int5 7.3e-2 / 0.974 / 1.9e-3 / 0.10, int5 decode 7.3e-2 /
0.973 / 2.0e-3 / 7.2e-2; float32 and float16 as below.
Measured (held-out / README.md, earlier):

  storage   vs       max rel err       top-1            mean KL            max KL
  float32   float64  1.5e-6 / 2.1e-6   1      / 1       1.0e-12 / 1.4e-12  1.4e-10 / 1.0e-10
  float16   float32  0      / 0        1      / 1       0       / 0        0       / 0
  bfloat16  float32  2.4e-3 / 3.9e-3   0.9995 / 0.9995  4.6e-6  / 1.1e-5   1.8e-4  / 8.1e-4
  int8      float32  1.0e-2 / 2.2e-2   0.9961 / 0.9941  6.1e-5  / 2.0e-4   1.3e-3  / 3.7e-2
  int8 decode (B = 1, token by token, 1,024 positions; x rounded to int16 before each product)
                     9.6e-3 / 1.9e-2   0.9961 / 0.9922  6.0e-5  / 2.0e-4   1.2e-3  / 1.8e-2
  int4      float32  8.2e-2 / 0.21     0.9697 / 0.9385  3.0e-3  / 1.5e-2   0.12    / 1.3
  int4 decode (x rounded to int8 per group of 32 with AVX512-VNNI or AVX2, else int16)
                     8.0e-2 / 0.19     0.9668 / 0.9404  2.9e-3  / 1.2e-2   0.11    / 0.52
  int5      float32  3.8e-2            0.9829           7.6e-4             2.0e-2
  int5 decode        3.3e-2            0.9844           7.5e-4             1.9e-2

float16 is exact because the demo model is F16 on disk: both storages multiply by the same
values (only the order of accumulation could differ), so it is held to float32's own floor.
Mean KL, the steadiest figure, is bounded at 2.5x its measured value: quantizer bugs that
still give plausible text (floor for rint, 128 for 127 in the int8 scale, truncation for
rounding in bfloat16) raised it 3-5x when injected by hand. Maxima (one worst position) and
top-1 (a handful of near-ties) get 4-10x.
"""
import importlib.util

import pytest

from conftest import REPO, SHARED_DATA

# storage: (max rel logit error, min top-1 agreement, max mean KL, max of max KL); KL in nats
FLOOR = (1e-5, 0.999, 1e-10, 1e-8)  # float32 against float64, and float16 (the same weights)
BOUNDS = {
    "held-out tinyshakespeare": {"float32": FLOOR, "float16": FLOOR,
                                 "bfloat16": (1e-2, 0.995, 1.2e-5, 1e-3),
                                 "int8": (3e-2, 0.99, 1.5e-4, 1e-2),
                                 "int8 decode": (3e-2, 0.99, 1.5e-4, 1e-2),
                                 "int4": (0.25, 0.93, 7.5e-3, 0.6),
                                 "int4 decode": (0.25, 0.93, 7.5e-3, 0.6),
                                 "int5": (0.15, 0.96, 1.9e-3, 0.1),
                                 "int5 decode": (0.15, 0.96, 1.9e-3, 0.1)},
    "license text": {"float32": FLOOR, "float16": FLOOR,  # mean KL at 2.5x, the rest 4-10x
                     "bfloat16": (2e-2, 0.995, 2.4e-5, 1e-2),
                     "int8": (6e-2, 0.985, 3.3e-4, 0.05),
                     "int8 decode": (6e-2, 0.985, 3.7e-4, 0.05),
                     "int4": (0.8, 0.88, 2.1e-2, 4.0),
                     "int4 decode": (0.8, 0.88, 2.0e-2, 4.0),
                     "int5": (0.3, 0.95, 4.7e-3, 0.5),
                     "int5 decode": (0.3, 0.95, 4.9e-3, 0.4)},
}


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def text() -> tuple[str, object]:
    """(text name, ids (4, 512)): 2,048 positions."""
    tool = load_tool("quality")
    tinyshakespeare = SHARED_DATA / "tinyshakespeare.txt"  # as the shared_data fixture, no skip
    if tinyshakespeare.is_file():
        name, text = "held-out tinyshakespeare", tool.held_out(tinyshakespeare.read_bytes())
    else:
        name, text = "license text", (REPO / "rwkv_np" / "assets" / "rwkv-world" / "LICENSE").read_bytes()
    return name, tool.windows(text, 4)


@pytest.fixture(scope="module")
def measured(text) -> tuple[str, dict]:
    """(text name, {storage: logit_agreement row}) on 2,048 positions."""
    name, ids = text
    return name, {row["storage"]: row for row in load_tool("quality").measure(ids)}


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "int8", "int8 decode", "int4", "int4 decode",
                                     "int5", "int5 decode"])
def test_storage_keeps_the_float32_predictions(measured, storage):
    text, rows = measured
    row = rows[storage]
    max_rel, min_top1, max_mean_kl, max_kl = BOUNDS[text][storage]
    assert row["positions"] >= 1024
    assert row["max_rel_err"] <= max_rel, (text, row)
    assert row["top1"] >= min_top1, (text, row)
    assert row["mean_kl"] <= max_mean_kl, (text, row)
    assert row["max_kl"] <= max_kl, (text, row)


def test_int4_study_rounds_and_counts_bits_as_stated():
    """tools/quality.py --int4-study: its min/max rounding is ggml's Q4_1 / Q5_1 rule (here from
    a float64 loop over each group, written from that rule), and each row's bits per layer weight
    is the count by hand for the demo model (per layer: the four attention matrices and the ffn
    receptance 128 x 128, ffn key 512 x 128, ffn value 128 x 512; int8 = 8 bits + a float32 scale
    per row of 128 or 512; int4 = 4 bits + two float16 per 32)."""
    import numpy as np
    tool = load_tool("quality")
    W = np.random.default_rng(1).standard_normal((5, 96)).astype(np.float32) * 0.1
    for levels in (15, 31):
        want = np.empty((5, 96))
        for i in range(5):
            for g in range(3):
                w = W[i, 32 * g:32 * g + 32].astype(np.float64)
                d = float(np.float16((w.max() - w.min()) / levels))
                m = float(np.float16(w.min()))
                want[i, 32 * g:32 * g + 32] = [min(max(round((x - m) / d), 0), levels) * d + m for x in w]
        assert np.allclose(tool.minmax_groups(W, levels), want, rtol=0, atol=1e-7)
    rows = {r["storage"]: r for r in tool.int4_study(tool.windows(b"ROMEO: hello there, good sir. " * 8, 2, 64))}
    att, ffn = 128 * 128, 128 * 512  # each of 4 attention matrices and ffn receptance; ffn key, value
    total = 5 * att + 2 * ffn
    assert rows["int4 (as stored)"]["bits_per_weight"] == 5.0
    assert rows["min/max 5-bit, groups of 32 (Q5_1's rounding)"]["bits_per_weight"] == 6.0
    assert rows["int5 (as stored)"]["bits_per_weight"] == 6.0
    key = rows["int4, feed_forward.key int8"]["bits_per_weight"]
    assert abs(key - ((total - ffn) * 5 + ffn * (8 + 32 / 128)) / total) < 1e-12
    value = rows["int4, feed_forward.value int8"]["bits_per_weight"]
    assert abs(value - ((total - ffn) * 5 + ffn * (8 + 32 / 512)) / total) < 1e-12


def test_int5_beats_q5_1_rounding(text):
    """int5 (6 bits a layer weight) against rwkv.cpp Q5_1's rounding (5-bit min/max in groups of
    32 with float16 scale and minimum, the same 6 bits; tools/quality.py --int4-study), layer
    matrices only, on the 2,048 positions above: int5's mean KL is the lower. Measured: held-out
    7.6e-4 vs 9.2e-4 (rwkv.cpp's own Q5_1 file: 8.9e-4), license text 1.9e-3 vs 2.4e-3. (On a
    few hundred positions the order can flip: 128 bytes of test_int4_study's text gave 1.3e-3 vs
    1.0e-3.)"""
    name, ids = text
    q5 = "min/max 5-bit, groups of 32 (Q5_1's rounding)"
    rows = {r["storage"]: r for r in load_tool("quality").int4_study(ids, labels=(q5, "int5 (as stored)"))}
    assert rows["int5 (as stored)"]["mean_kl"] <= rows[q5]["mean_kl"], (name, rows)
