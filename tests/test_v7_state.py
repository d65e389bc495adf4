"""RWKV-7 states move between rwkv_np's layout, BlinkDL's `rwkv` package's and rwkv.cpp's without
changing a bit (rwkv_np/v7/state.py), and a state rwkv_np made continues inside the package.

The layouts are written out here from RWKV567_SPEC.md section 5, not from state.py: the package
holds a list of 3L tensors, per layer att_x (C), wkv (H, N, N) [value][key], ffn_x (C); rwkv.cpp
one float32 vector, per layer ffn_x (C), att_x (C), wkv heads H*N*N in [value][key]. The live
test's reference is the `rwkv` package itself (0.8.32, RWKV_x070, cpu fp32), run in a subprocess
so that its import-time switches (RWKV_V7_ON...) cannot leak into other tests.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from rwkv_np.errors import InputError
from rwkv_np.v7.model import Rwkv7ForCausalLM
from rwkv_np.v7.state import from_rwkv_pip, from_rwkvcpp, to_rwkv_pip, to_rwkvcpp

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "v7"


def labelled_state(B=2, L=3, H=2, N=4):
    """Every value names its place: att_x 1_bll_cc, ffn_x 2_bll_cc, wkv 3_bll_h_i_j (decimal
    digits: kind, batch, layer, channel or head, value index i, key index j)."""
    C = H * N
    b, l, c = np.meshgrid(np.arange(B), np.arange(L), np.arange(C), indexing="ij")
    att_x = 1e6 + b * 1e5 + l * 1e4 + c
    ffn_x = 2e6 + b * 1e5 + l * 1e4 + c
    b, l, h, i, j = np.meshgrid(*map(np.arange, (B, L, H, N, N)), indexing="ij")
    wkv = 3e6 + b * 1e5 + l * 1e4 + h * 100 + i * 10 + j
    return [att_x.astype(np.float32), ffn_x.astype(np.float32), wkv.astype(np.float32)]


def test_rwkv_pip_layout_is_att_x_wkv_ffn_x_per_layer():
    B, L, H, N = 2, 3, 2, 4
    pip = to_rwkv_pip(labelled_state(B, L, H, N), index=1)
    assert len(pip) == 3 * L
    for l in range(L):
        np.testing.assert_array_equal(pip[3 * l], 1e6 + 1e5 + l * 1e4 + np.arange(H * N))
        np.testing.assert_array_equal(pip[3 * l + 2], 2e6 + 1e5 + l * 1e4 + np.arange(H * N))
        assert pip[3 * l + 1].shape == (H, N, N)
        for h in range(H):
            for i in range(N):
                for j in range(N):
                    assert pip[3 * l + 1][h, i, j] == 3e6 + 1e5 + l * 1e4 + h * 100 + i * 10 + j


def test_rwkvcpp_layout_is_ffn_x_att_x_heads_per_layer():
    B, L, H, N = 2, 3, 2, 4
    C = H * N
    flat = to_rwkvcpp(labelled_state(B, L, H, N), index=1)
    assert flat.dtype == np.float32 and flat.shape == (L * (2 + N) * C,)
    for l in range(L):
        base = l * (2 + N) * C
        np.testing.assert_array_equal(flat[base:base + C], 2e6 + 1e5 + l * 1e4 + np.arange(C))
        np.testing.assert_array_equal(flat[base + C:base + 2 * C], 1e6 + 1e5 + l * 1e4 + np.arange(C))
        for h, i, j in [(0, 0, 0), (0, 1, 3), (1, 3, 2), (1, 2, 0)]:
            assert flat[base + 2 * C + h * N * N + i * N + j] == 3e6 + 1e5 + l * 1e4 + h * 100 + i * 10 + j


@given(B=st.integers(1, 3), L=st.integers(1, 4), H=st.integers(1, 3), N=st.sampled_from([1, 2, 4, 8]),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16))
def test_round_trips_are_exact(B, L, H, N, dtype, seed):
    rng = np.random.default_rng(seed)
    C = H * N
    state = [rng.normal(size=s).astype(dtype) for s in ((B, L, C), (B, L, C), (B, L, H, N, N))]
    index = B - 1
    back = from_rwkv_pip(to_rwkv_pip(state, index))
    for a, b in zip(state, back):
        assert b.dtype == dtype and b.shape == (1, *a.shape[1:])
        np.testing.assert_array_equal(a[index:index + 1], b)
    flat = to_rwkvcpp(state, index)
    back = from_rwkvcpp(flat, n_layer=L, head_dim=N)
    for a, b in zip(state, back):
        assert b.dtype == np.float32 and b.shape == (1, *a.shape[1:])
        np.testing.assert_array_equal(a[index:index + 1].astype(np.float32), b)
    np.testing.assert_array_equal(to_rwkvcpp(back), flat)


def test_converted_state_is_accepted_by_the_model():
    """from_* give the model's own layout: a batch-of-one state the model takes as it is."""
    from test_v7_model import MULTI, random_params
    model = Rwkv7ForCausalLM(MULTI, random_params(MULTI), "float64")
    ids = [[3, 1, 4, 1, 5]]
    whole = model(ids)
    first = model([ids[0][:2]])
    for state in (from_rwkv_pip(to_rwkv_pip(first.state)),
                  from_rwkvcpp(to_rwkvcpp(first.state), MULTI.num_hidden_layers, MULTI.head_dim)):
        rest = model([ids[0][2:]], state=state)
        scale = np.abs(whole.logits).max()
        assert np.abs(rest.logits[0, -1] - whole.logits[0, -1]).max() < 1e-6 * scale  # float32 rwkv.cpp buffer


def test_bad_states_are_clear_errors():
    state = labelled_state(B=2, L=3, H=2, N=4)
    with pytest.raises(InputError, match="list of 3 arrays"):
        to_rwkv_pip(state[:2])
    with pytest.raises(InputError, match="H\\*N = C"):
        to_rwkvcpp([state[0], state[1], state[2][..., :3]])
    with pytest.raises(InputError, match="index: 2 is outside the batch of 2"):
        to_rwkvcpp(state, index=2)
    with pytest.raises(InputError, match="3\\*L arrays"):
        from_rwkv_pip([np.zeros(8), np.zeros((2, 4, 4))])
    with pytest.raises(InputError, match="3\\*L arrays"):
        from_rwkv_pip([np.zeros(8), np.zeros((2, 4, 3)), np.zeros(8)])
    with pytest.raises(InputError, match="3\\*L arrays"):
        from_rwkv_pip([])
    with pytest.raises(InputError, match="143 values"):
        from_rwkvcpp(np.zeros(143), n_layer=3, head_dim=4)
    with pytest.raises(InputError, match="multiple of head_dim 4"):
        from_rwkvcpp(np.zeros(3 * 6 * 6), n_layer=3, head_dim=4)  # C = 6 is not H * 4


PACKAGE = """
import os, sys, json
os.environ.update(RWKV_V7_ON="1", RWKV_JIT_ON="0", RWKV_CUDA_ON="0")
import numpy as np, torch
from rwkv.model import RWKV
model = RWKV(model=sys.argv[1], strategy="cpu fp32")
given = np.load(sys.argv[2])
state = [torch.from_numpy(given[str(k)]) for k in range(len(given.files))]
out = {}
for n, ids in enumerate(json.loads(sys.argv[3])):     # a list of > 1 ids runs forward_seq, of 1 forward_one
    logits, state = model.forward(ids, state)
    out[f"logits{n}"] = logits.numpy()
out.update({f"state{k}": s.numpy() for k, s in enumerate(state)})
np.savez(sys.argv[4], **out)
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("rwkv") is None,
                    reason="needs torch and BlinkDL's rwkv package (pip install rwkv)")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_made_by_rwkv_np_continues_in_the_rwkv_package_and_back(tmp_path, dtype):
    """tests/fixtures/v7/h4n32_ranks.pth (4 heads of 32, bfloat16 on disk): rwkv_np runs a prompt,
    the package continues from the converted state (a sequence, then one token), and its state
    continues in rwkv_np. Every logit must be within 1e-5 of max |logit| (8.0) of rwkv_np's
    uninterrupted run, the state within 1e-5 of its largest value. Measured: logits 7.2e-7
    (float32) / 7.0e-7 (float64) relative, states 9.0e-7 / 7.2e-7; with the WKV state handed over
    transposed ([key][value]) the logits are off by 0.8 of max |logit|."""
    name = "h4n32_ranks"
    if not (FIXTURES / f"{name}.pth").exists():
        pytest.skip(f"{FIXTURES / name}.pth is absent")
    ours = Rwkv7ForCausalLM.from_pretrained(FIXTURES / f"{name}.pth", dtype=dtype)
    prompt, rest, one, more = [5, 17, 33, 2, 61, 0], [9, 40, 12, 700], [88], [3, 999, 4]
    whole = ours([prompt + rest + one + more])
    state = ours([prompt]).state
    np.savez(tmp_path / "in.npz", **{str(k): s.astype(np.float32) for k, s in enumerate(to_rwkv_pip(state))})
    subprocess.run([sys.executable, "-c", PACKAGE, str(FIXTURES / name), str(tmp_path / "in.npz"),
                    json.dumps([rest, one]), str(tmp_path / "out.npz")],
                   check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    theirs = np.load(tmp_path / "out.npz")
    scale = np.abs(whole.logits).max()
    at = lambda t: whole.logits[0, t - 1]  # noqa: E731  (the logits after the first t tokens)
    assert np.abs(theirs["logits0"] - at(len(prompt + rest))).max() < 1e-5 * scale
    assert np.abs(theirs["logits1"] - at(len(prompt + rest + one))).max() < 1e-5 * scale

    back = from_rwkv_pip([theirs[f"state{k}"] for k in range(3 * ours.config.num_hidden_layers)])
    mid = ours([prompt + rest + one]).state
    for got, want in zip(back, mid):
        assert np.abs(got - want).max() < 1e-5 * np.abs(want).max()
    after = ours([more], state=back)
    assert np.abs(after.logits[0] - whole.logits[0, -len(more):]).max() < 1e-5 * scale
