"""WKV-5 (RWKV-5 and RWKV-6): the chunked form (wkv.py) and the Numba kernels (kernels.py) against
the recurrence.

The oracle is `wkv5_sequential`, the recurrence exactly as BlinkDL's, rwkv.cpp's and ggml's code
write it, one token at a time (y_t = r_t^T (S + diag(u) k_t v_t^T), S <- diag(w_t) S + k_t v_t^T).
Log-decays come in the kinds the models make, including the adversarial ends: decays within 1e-12
of 1, RWKV-6's unbounded-below log-decays (-exp(ww) for ww up to 700, and -inf from a stored
decay of 0) clamped as the models clamp them, a mixture of all, and RWKV-5's constant in time.
Measured on 300 random cases of these kinds: chunked vs sequential at most 1.1e-15 relative.
"""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rwkv_np.v5.kernels import _wkv5_kernel, _wkv5_kernel_parallel, wkv5_forward
from rwkv_np.v5.wkv import LOG_DECAY_FLOOR, clamp_log_decay, wkv5_chunked, wkv5_sequential

DECAYS = ("typical", "near_one", "strong", "unbounded", "mixed", "constant")


def log_decays(rng, shape, decay):
    """λ (B, T, H, N) of one kind, before clamping."""
    kinds = {"typical": -np.exp(rng.normal(0, 2, shape)),                      # w from ~0 to ~1
             "near_one": -10.0 ** rng.uniform(-12, -6, shape),                 # w within 1e-6 of 1
             "strong": -np.exp(rng.uniform(2, 8, shape)),                       # λ from -7 to -3000
             "unbounded": np.where(rng.random(shape) < 0.2, -np.inf, -np.exp(rng.uniform(0, 700, shape)))}
    if decay == "mixed":
        return np.choose(rng.integers(0, 4, shape), list(kinds.values()))
    if decay == "constant":                                                     # RWKV-5: one λ per channel
        return np.broadcast_to(kinds["typical"][:, :1], shape)
    return kinds[decay]


def make_inputs(seed, shape, decay="typical", with_state=True):
    """(r, w_log clamped, k, v) each (B, T, H, N), u (H, N), and a state (B, H, N, N) or None."""
    rng = np.random.default_rng(seed)
    B, T, H, N = shape
    r, k, v = (rng.normal(size=shape) for _ in range(3))
    u = rng.normal(size=(H, N))
    state = rng.normal(size=(B, H, N, N)) if with_state else None
    return (r, clamp_log_decay(log_decays(rng, shape, decay)), k, v, u), state


def rel(x, ref):
    """max |x - ref| relative to the largest |ref|."""
    return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


shapes = st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 3), st.sampled_from([1, 2, 3, 4, 8, 16]))
cases = dict(seed=st.integers(0, 2**32 - 1), shape=shapes, decay=st.sampled_from(DECAYS), with_state=st.booleans())


@given(**cases, chunk=st.integers(1, 45))
@example(seed=1, shape=(1, 37, 2, 16), decay="mixed", with_state=True, chunk=16)       # partial chunk
@example(seed=2, shape=(2, 40, 3, 16), decay="unbounded", with_state=False, chunk=40)
@example(seed=3, shape=(1, 40, 1, 8), decay="near_one", with_state=True, chunk=40)
def test_chunked_equals_sequential(seed, shape, decay, with_state, chunk):
    inputs, state = make_inputs(seed, shape, decay, with_state)
    y, S = wkv5_sequential(*inputs, state)
    yc, Sc = wkv5_chunked(*inputs, state, chunk=chunk)
    assert rel(yc, y) < 1e-10
    assert rel(Sc, S) < 1e-10


def test_chunked_stays_finite_without_the_clamp():
    """The pairwise exponents are sums of same-sign log-decays, never differences: -inf and
    -1e308 (whose sums overflow to -inf) give exact zeros, no NaN, even unclamped."""
    (r, _, k, v, u), state = make_inputs(5, (1, 20, 2, 4))
    w_log = np.full(r.shape, -0.1)
    w_log[:, 3], w_log[:, 7, 0], w_log[:, 8, 1] = -np.inf, -1e308, -1e308
    y, S = wkv5_sequential(r, w_log, k, v, u, state)
    for chunk in (4, 9, 20):
        yc, Sc = wkv5_chunked(r, w_log, k, v, u, state, chunk=chunk)
        assert np.all(np.isfinite(yc)) and np.all(np.isfinite(Sc))
        assert rel(yc, y) < 1e-12 and rel(Sc, S) < 1e-12
    assert clamp_log_decay(np.array([-np.inf, -1e308, -5.0])).tolist() == [LOG_DECAY_FLOOR, LOG_DECAY_FLOOR, -5.0]
    assert np.exp(np.float32(LOG_DECAY_FLOOR)) == 0 and np.exp(LOG_DECAY_FLOOR) == 0   # the clamp changes no decay


@given(**cases, split=st.integers(0, 40), chunk=st.integers(1, 20))
def test_split_with_state_equals_whole(seed, shape, decay, with_state, split, chunk):
    """Running tokens [0, split) then [split, T) from the state the first part returns gives the
    outputs and final state of one run: exactly for the token-by-token forms, to rounding for
    the chunked one (its chunks then start at different tokens)."""
    inputs, state = make_inputs(seed, shape, decay, with_state)
    split = min(split, shape[1])
    head = [x[:, :split] for x in inputs[:4]] + [inputs[4]]
    tail = [x[:, split:] for x in inputs[:4]] + [inputs[4]]
    y, S = wkv5_sequential(*inputs, state)
    y1, S1 = wkv5_sequential(*head, state)
    y2, S2 = wkv5_sequential(*tail, S1)
    np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
    np.testing.assert_array_equal(S2, S)
    y1, S1 = wkv5_chunked(*head, state, chunk=chunk)
    y2, S2 = wkv5_chunked(*tail, S1, chunk=chunk)
    assert rel(np.concatenate([y1, y2], axis=1), y) < 1e-10
    assert rel(S2, S) < 1e-10
    for dtype in (np.float32, np.float64):
        cast = [x.astype(dtype) for x in inputs]
        s0 = None if state is None else state.astype(dtype)
        y, S = wkv5_forward(*cast, s0)
        y1, S1 = wkv5_forward(*[x[:, :split] for x in cast[:4]], cast[4], s0)
        y2, S2 = wkv5_forward(*[x[:, split:] for x in cast[:4]], cast[4], S1)
        np.testing.assert_array_equal(np.concatenate([y1, y2], axis=1), y)
        np.testing.assert_array_equal(S2, S)


@given(**cases)
def test_kernel_float64_equals_readable(seed, shape, decay, with_state):
    inputs, state = make_inputs(seed, shape, decay, with_state)
    y, S = wkv5_sequential(*inputs, state)
    yk, Sk = wkv5_forward(*inputs, state)
    assert yk.dtype == Sk.dtype == np.float64
    assert rel(yk, y) < 1e-12
    assert rel(Sk, S) < 1e-12


def term_magnitude(r, w_log, k, v, u, state):
    """σ: the largest magnitude of any term the recurrence adds, max over t, i, j of
    |w_i S[i][j]| + |k_i v_j| (the update) and |S[i][j]| + |u_i k_i v_j| (what y reads), S_0
    included, in float64."""
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N)) if state is None else state
    sigma = np.abs(S).max()
    for t in range(T):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]
        w = np.exp(w_log[:, t])[..., None]
        sigma = max(sigma, (np.abs(S) + np.abs(u[..., None] * kv)).max(), (np.abs(w * S) + np.abs(kv)).max())
        S = w * S + kv
    return sigma


@given(**cases)
@example(seed=7, shape=(1, 1, 1, 8), decay="typical", with_state=False)   # y = r u k v: one product
def test_kernel_float32_within_error_model(seed, shape, decay, with_state):
    """Float32 against float64 on the same (float32) inputs, so only arithmetic rounding differs.

    Error model (forward error of a running sum): each token rounds each state element's two
    terms, and w = e^λ once (about one eps32 relative), so it adds an error of a few eps32 times
    σ (term_magnitude); the state carries earlier errors forward without amplifying them (w <= 1).
    y_t sums N terms r_i (S[i][j] + u_i k_i v_j), each within (T + 3) eps32 σ |r_i|. Over T tokens:
        max |ΔS| <= (T + 3) eps32 σ,     max |Δy_t| <= (N + T + 3) eps32 σ max_t ||r_t||_1.
    Relative to max |y| there is no such bound: y = Σ_i r_i S[i][j] can cancel. Measured on the
    1500 random cases of these kinds: at most 0.16 of either bound."""
    inputs, state = make_inputs(seed, shape, decay, with_state)
    inputs32 = [x.astype(np.float32) for x in inputs]
    state32 = None if state is None else state.astype(np.float32)
    inputs64 = [x.astype(np.float64) for x in inputs32]
    state64 = None if state32 is None else state32.astype(np.float64)
    y64, S64 = wkv5_forward(*inputs64, state64)
    y32, S32 = wkv5_forward(*inputs32, state32)
    assert y32.dtype == S32.dtype == np.float32
    B, T, H, N = shape
    eps, sigma = np.finfo(np.float32).eps, term_magnitude(*inputs64, state64)
    assert np.max(np.abs(S32 - S64)) <= (T + 3) * eps * sigma
    assert np.max(np.abs(y32 - y64)) <= (N + T + 3) * eps * sigma * np.abs(inputs64[0]).sum(-1).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parallel_build_gives_the_same_bits(dtype):
    """The parallel build is the one-core loop inlined under prange: same arithmetic per head."""
    inputs, state = make_inputs(3, (2, 9, 3, 16), "mixed")
    inputs = [x.astype(dtype) for x in inputs]
    out = []
    for kernel in (_wkv5_kernel, _wkv5_kernel_parallel):
        S, y = state.astype(dtype), np.empty(inputs[0].shape, dtype)
        kernel(*inputs, S, y)
        out.append((y, S))
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_forward_leaves_the_callers_state_alone_and_handles_no_tokens():
    inputs, state = make_inputs(4, (1, 5, 2, 8))
    before = state.copy()
    wkv5_forward(*inputs, state)
    np.testing.assert_array_equal(state, before)
    y, S = wkv5_forward(*[x[:, :0] for x in inputs[:4]], inputs[4], state)
    assert y.shape == (1, 0, 2, 8)
    np.testing.assert_array_equal(S, state)


def test_two_tokens_by_hand():
    """N = 1, one head: S' = w S + k v and y = r (S + u k v), numbers worked out by hand."""
    r, k, v = (np.full((1, 2, 1, 1), x) for x in (2.0, 3.0, 5.0))
    w_log, u, S0 = np.full((1, 2, 1, 1), np.log(0.5)), np.full((1, 1), 0.25), np.full((1, 1, 1, 1), 4.0)
    # token 1: y = 2 (4 + 0.25*15) = 15.5, S = 0.5*4 + 15 = 17; token 2: y = 2 (17 + 3.75) = 41.5, S = 8.5 + 15
    for f in (wkv5_sequential, wkv5_chunked, wkv5_forward):
        y, S = f(r, w_log, k, v, u, S0)
        assert y[0, :, 0, 0].tolist() == pytest.approx([15.5, 41.5], rel=1e-15)
        assert S[0, 0, 0, 0] == pytest.approx(23.5, rel=1e-15)


MODELS = {}


@given(variant=st.sampled_from(["5.0", "5.1", "5.2"]), seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3),
       length=st.integers(1, 24), split=st.integers(0, 24), dtype=st.sampled_from(["float32", "float64"]))
def test_model_split_with_state_equals_whole(variant, seed, batch, length, split, dtype):
    """The fast model on a prompt in two calls (the state of the first passed to the second) gives
    the logits and final state of one call: float64 within 1e-12, float32 within 1e-5, relative."""
    from test_v5_model import multi

    from rwkv_np.v5.model import Rwkv5ForCausalLM
    if (variant, dtype) not in MODELS:
        MODELS[variant, dtype] = Rwkv5ForCausalLM(*multi(variant), dtype)
    model = MODELS[variant, dtype]
    ids = np.random.default_rng(seed).integers(0, model.config.vocab_size, (batch, length))
    split = min(split, length - 1)
    whole = model(ids)
    first = model(ids[:, :split]) if split else None
    second = model(ids[:, split:], state=first.state if first else None)
    tol = {"float32": 1e-5, "float64": 1e-12}[dtype]
    logits = second.logits if first is None else np.concatenate([first.logits, second.logits], axis=1)
    assert rel(logits, whole.logits) < tol
    for got, want in zip(second.state, whole.state):
        assert rel(got, want) < tol
