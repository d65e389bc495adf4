"""WKV-7: the chunked form (wkv.py) and the Numba kernels (kernels.py) against the recurrence.

The oracle is `wkv7_sequential`, the recurrence exactly as BlinkDL's and rwkv.cpp's code write
it, one token at a time (S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T, y_t = S_t r_t). Inputs
are shaped as the model makes them: a = -kk, b = kk * iclr with kk of unit length per head and
the learning rate iclr in (0, 1); log-decays in (-e^{-1/2}, 0), including the adversarial ends:
decays within 1e-12 of 1 (log-decay near 0) and of e^{-e^{-1/2}} (log-decay near its floor).
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rwkv_np.v7.kernels import _wkv7_kernel, _wkv7_kernel_parallel, wkv7_forward
from rwkv_np.v7.wkv import wkv7_chunked, wkv7_sequential

FLOOR = np.exp(-0.5)  # log-decays lie in (-FLOOR, 0)
DECAYS = ("typical", "near_zero", "near_floor", "mixed")
RATES = ("uniform", "near_zero", "near_one")


def make_inputs(seed, shape, decay="typical", rate="uniform", with_state=True):
    """(r, w_log, k, v, a, b) each (B, T, H, N), and a state (B, H, N, N) or None, in float64."""
    rng = np.random.default_rng(seed)
    B, T, H, N = shape
    r, k, v = (rng.normal(size=shape) for _ in range(3))
    logs = {"typical": -FLOOR / (1 + np.exp(-rng.normal(0, 3, shape))),
            "near_zero": -FLOOR * 10.0 ** rng.uniform(-12, -6, shape),
            "near_floor": -FLOOR * (1 - 10.0 ** rng.uniform(-12, -6, shape))}
    w_log = logs[decay] if decay != "mixed" else np.choose(rng.integers(0, 3, shape), list(logs.values()))
    iclr = {"uniform": rng.uniform(0, 1, shape),
            "near_zero": 10.0 ** rng.uniform(-9, -3, shape),
            "near_one": 1 - 10.0 ** rng.uniform(-9, -3, shape)}[rate]
    kk = rng.normal(size=shape)
    kk /= np.linalg.norm(kk, axis=-1, keepdims=True)
    state = rng.normal(size=(B, H, N, N)) if with_state else None
    return (r, w_log, k, v, -kk, kk * iclr), state


def rel(x, ref):
    """max |x - ref| relative to the largest |ref|."""
    return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


shapes = st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 3), st.sampled_from([1, 2, 3, 4, 8, 16]))
cases = dict(seed=st.integers(0, 2**32 - 1), shape=shapes, decay=st.sampled_from(DECAYS),
             rate=st.sampled_from(RATES), with_state=st.booleans())


@given(**cases, chunk=st.integers(1, 45))
@example(seed=1, shape=(1, 37, 2, 16), decay="mixed", rate="uniform", with_state=True, chunk=16)  # partial chunk
@example(seed=2, shape=(2, 40, 3, 16), decay="near_zero", rate="near_one", with_state=False, chunk=40)
def test_chunked_equals_sequential(seed, shape, decay, rate, with_state, chunk):
    inputs, state = make_inputs(seed, shape, decay, rate, with_state)
    y, S = wkv7_sequential(*inputs, state)
    yc, Sc = wkv7_chunked(*inputs, state, chunk=chunk)
    assert rel(yc, y) < 1e-10
    assert rel(Sc, S) < 1e-10


@given(**cases, split=st.integers(0, 40), chunk=st.integers(1, 20))
def test_split_with_state_equals_whole(seed, shape, decay, rate, with_state, split, chunk):
    """Running tokens [0, split) then [split, T) from the state the first part returns gives the
    outputs and final state of one run: exactly for the token-by-token forms, to rounding for
    the chunked one (its chunks then start at different tokens)."""
    inputs, state = make_inputs(seed, shape, decay, rate, with_state)
    split = min(split, shape[1])
    head, tail = [x[:, :split] for x in inputs], [x[:, split:] for x in inputs]
    y, S = wkv7_sequential(*inputs, state)
    y1, S1 = wkv7_sequential(*head, state)
    y2, S2 = wkv7_sequential(*tail, S1)
    np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
    np.testing.assert_array_equal(S2, S)
    y1, S1 = wkv7_chunked(*head, state, chunk=chunk)
    y2, S2 = wkv7_chunked(*tail, S1, chunk=chunk)
    assert rel(np.concatenate([y1, y2], axis=1), y) < 1e-10
    assert rel(S2, S) < 1e-10
    for dtype in (np.float32, np.float64):
        cast = [x.astype(dtype) for x in inputs]
        s0 = None if state is None else state.astype(dtype)
        y, S = wkv7_forward(*cast, s0)
        y1, S1 = wkv7_forward(*[x[:, :split] for x in cast], s0)
        y2, S2 = wkv7_forward(*[x[:, split:] for x in cast], S1)
        np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
        np.testing.assert_array_equal(S2, S)


@given(**cases)
def test_kernel_float64_equals_readable(seed, shape, decay, rate, with_state):
    inputs, state = make_inputs(seed, shape, decay, rate, with_state)
    y, S = wkv7_sequential(*inputs, state)
    yk, Sk = wkv7_forward(*inputs, state)
    assert yk.dtype == Sk.dtype == np.float64
    assert rel(yk, y) < 1e-12
    assert rel(Sk, S) < 1e-12


def term_magnitude(r, w_log, k, v, a, b, state):
    """σ: the largest magnitude of any term the recurrence adds into a state element, max over t, i, j
    of |S_{t-1}[i,j]| w_j + (|S_{t-1}| |a_t|)_i |b_j| + |v_i| |k_j| (S_0 included), in float64."""
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N)) if state is None else state
    sigma = np.abs(S).max()
    for t in range(T):
        w, at, bt, kt, vt = np.exp(w_log[:, t])[:, :, None, :], a[:, t], b[:, t], k[:, t], v[:, t]
        sa_mag = np.einsum("bhij,bhj->bhi", np.abs(S), np.abs(at))
        terms = np.abs(S) * w + sa_mag[..., None] * np.abs(bt)[:, :, None, :] + np.abs(vt)[..., None] * np.abs(kt)[:, :, None, :]
        sigma = max(sigma, terms.max())
        S = S * w + np.einsum("bhij,bhj->bhi", S, at)[..., None] * bt[:, :, None, :] + vt[..., None] * kt[:, :, None, :]
    return sigma


@given(**cases)
@example(seed=32629742, shape=(1, 1, 1, 8), decay="typical", rate="uniform", with_state=False)  # k·r cancels
@example(seed=1, shape=(1, 25, 1, 1), decay="mixed", rate="uniform", with_state=False)  # w - iclr cancels
def test_kernel_float32_within_error_model(seed, shape, decay, rate, with_state):
    """Float32 against float64 on the same (float32) inputs, so only arithmetic rounding differs.

    Error model (forward error of a running sum): each token rounds each state element's three
    terms and the N-term sum S a, so it adds an error of a few eps32 times σ (term_magnitude); the
    state carries earlier errors forward without amplifying them (decays <= 1; the delta-rule term
    removes at most the fraction iclr < 1 of S along the unit kk). Over T tokens:
        max |ΔS| <= (N + T) eps32 σ,     max |Δy_t| <= (N + T) eps32 σ max_t ||r_t||_1.
    Relative to max |y| there is no such bound: y = S r cancels (k·r ≈ 0), and so can w_j - iclr
    (the two hypothesis examples above). Measured on 2000 random cases of these kinds: at most
    0.25 of either bound."""
    inputs, state = make_inputs(seed, shape, decay, rate, with_state)
    inputs32 = [x.astype(np.float32) for x in inputs]
    state32 = None if state is None else state.astype(np.float32)
    inputs64 = [x.astype(np.float64) for x in inputs32]
    state64 = None if state32 is None else state32.astype(np.float64)
    y64, S64 = wkv7_forward(*inputs64, state64)
    y32, S32 = wkv7_forward(*inputs32, state32)
    assert y32.dtype == S32.dtype == np.float32
    B, T, H, N = shape
    bound = (N + T) * np.finfo(np.float32).eps * term_magnitude(*inputs64, state64)
    assert np.max(np.abs(S32 - S64)) <= bound
    assert np.max(np.abs(y32 - y64)) <= bound * np.abs(inputs64[0]).sum(-1).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_build_gives_the_same_bits(dtype):
    """The parallel build is the one-core loop inlined under prange: same arithmetic per head."""
    inputs, state = make_inputs(3, (2, 9, 3, 16), "mixed")
    inputs = [x.astype(dtype) for x in inputs]
    out = []
    for kernel in (_wkv7_kernel, _wkv7_kernel_parallel):
        S, y = state.astype(dtype), np.empty(inputs[0].shape, dtype)
        kernel(*inputs, S, y)
        out.append((y, S))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_forward_leaves_the_callers_state_alone_and_handles_no_tokens():
    inputs, state = make_inputs(4, (1, 5, 2, 8))
    before = state.copy()
    wkv7_forward(*inputs, state)
    np.testing.assert_array_equal(state, before)
    y, S = wkv7_forward(*[x[:, :0] for x in inputs], state)
    assert y.shape == (1, 0, 2, 8)
    np.testing.assert_array_equal(S, state)


def test_one_token_by_hand():
    """N = 1, one head: S' = S (w + a b) + v k and y = S' r, numbers worked out by hand."""
    r, w_log, k, v, a, b = (np.full((1, 1, 1, 1), x) for x in (2.0, np.log(0.5), 3.0, 5.0, -1.0, 0.25))
    S0 = np.full((1, 1, 1, 1), 4.0)
    # S' = 4 * (0.5 - 0.25) + 5 * 3 = 16;  y = 16 * 2 = 32
    for f in (wkv7_sequential, wkv7_chunked, wkv7_forward):
        y, S = f(r, w_log, k, v, a, b, S0)
        assert S[0, 0, 0, 0] == pytest.approx(16.0, rel=1e-15)
        assert y[0, 0, 0, 0] == pytest.approx(32.0, rel=1e-15)
