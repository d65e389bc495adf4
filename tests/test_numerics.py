"""Numerics at the extremes: WKV against an exact mpmath oracle, and a very long input.

The oracle (`exact_wkv`) runs RWKV-4's recurrence as written, with no log-space tricks, in
mpmath at 50 significant digits (whose exponent range is unbounded, so e^(1e4) is just a number):

    wkv_t = (N + e^(u+k_t) v_t) / (D + e^(u+k_t)),   N <- e^w N + e^(k_t) v_t,   D <- e^w D + e^(k_t)

It is independent of rwkv_np's code. The inputs (w, u, k, v) are float64 numbers taken exactly.

Error measure: |got - exact| / s_t, where s_t is the same weighted average taken of |v| (so
s_t >= |exact|, and s_t = |exact| when every v > 0). wkv_t is a weighted average of the values; an
error relative to s_t is what rounding the weights can cause, whereas a plain relative error is
unbounded when positive and negative values cancel. `test_positive_values_plain_relative_error`
checks the plain relative error where it is meaningful.

Measured on adversarial inputs (64 steps x 16 channels, time_decay in [-20, 20] including both
ends, so w = -exp(time_decay) from -2e-9 to -4.9e8; u and k uniform in [-K, K]; a run of 30
identical keys, plateaus of k = +K and -K, one channel whose keys never change; v in [-2, 2]),
worst over 8 seeds:

    K       wkv_reference / wkv_forward f64   wkv_parallel   wkv_forward float32
    1       6e-16                             4e-16          2e-7
    10      7e-15                             1e-15          4e-6
    100     3e-14                             5e-15          3e-5
    1e3     2e-13                             4e-14          2e-4
    1e4     2e-12                             5e-13          9e-4

so the error grows like K * machine epsilon: the exponents u + k and p + w are formed with an
absolute rounding error of about K * eps, which becomes a relative error of the weights. The
tests assert float64 <= 1e-10 for K <= 100 (the requirement), float64 <= 1e-15 * K beyond, and
float32 <= 1e-6 * max(K, 1). Every result is finite: the exact output always is (a weighted
average of finite values), and so are all three implementations, at every K here.
"""
from __future__ import annotations

import os
import tracemalloc

import mpmath
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import random_state_dict
from rwkv_np import RwkvConfig, RwkvForCausalLM
from rwkv_np.v4.kernels import wkv_forward
from rwkv_np.v4.wkv import wkv_parallel, wkv_reference


def exact_wkv(w, u, k, v, digits: int = 50):  # w, u (C,)  k, v (T, C) -> out, scale (T, C)
    """The recurrence in mpmath; also the weighted average of |v| (the error scale)."""
    T, C = k.shape
    out, scale = np.empty((T, C)), np.empty((T, C))
    with mpmath.workdps(digits):
        for c in range(C):
            decay, first = mpmath.exp(mpmath.mpf(float(w[c]))), mpmath.mpf(float(u[c]))
            num = num_abs = den = mpmath.mpf(0)
            for t in range(T):
                kt, vt = mpmath.mpf(float(k[t, c])), mpmath.mpf(float(v[t, c]))
                now = mpmath.exp(first + kt)
                out[t, c] = float((num + now * vt) / (den + now))
                scale[t, c] = float((num_abs + now * abs(vt)) / (den + now))
                ek = mpmath.exp(kt)
                num, num_abs, den = decay * num + ek * vt, decay * num_abs + ek * abs(vt), decay * den + ek
    return out, scale


def adversarial(K: float, seed: int = 0, T: int = 64, C: int = 8):
    """w (C,), u (C,), k (T, C), v (T, C): extreme decays, keys in [-K, K] with long flat runs."""
    rng = np.random.default_rng(seed)
    time_decay = rng.uniform(-20, 20, C)
    time_decay[:2] = [-20, 20]                # memory of ~5e8 tokens, and of none
    w = -np.exp(time_decay)
    u = rng.uniform(-K, K, C)
    k = rng.uniform(-K, K, (T, C))
    k[10:40] = k[10]                          # 30 identical keys
    k[40:50], k[50:55] = K, -K                # plateaus at both extremes
    k[:, 2] = k[0, 2]                         # a channel whose key never changes
    v = rng.uniform(-2, 2, (T, C))
    return w, u, k, v


def run_all(w, u, k, v) -> dict:
    """Each implementation's outputs (T, C) for one batch row."""
    k1, v1 = k[None], v[None]
    # wkv_forward in three pieces, chained by state: chunking must not cost accuracy.
    pieces, state = [], None
    for s in (slice(0, 20), slice(20, 41), slice(41, None)):
        out, state = wkv_forward(w, u, k1[:, s], v1[:, s], state)
        pieces.append(out)
    f32 = [x.astype(np.float32) for x in (w, u, k1, v1)]
    return {"wkv_reference": wkv_reference(w, u, k1, v1)[0][0],
            "wkv_parallel": wkv_parallel(w, u, k1, v1, chunk=16)[0][0],
            "wkv_forward float64 chained": np.concatenate(pieces, axis=1)[0],
            "wkv_forward float32": wkv_forward(*f32)[0][0]}


def errors(got: dict, exact, scale) -> dict:
    return {name: float(np.max(np.abs(x - exact) / scale)) for name, x in got.items()}


@pytest.mark.parametrize("K", [1, 10, 100, 1e3, 1e4])
def test_wkv_matches_mpmath_at_adversarial_values(K):
    w, u, k, v = adversarial(K, seed=int(np.log10(K)))
    exact, scale = exact_wkv(w, u, k, v)
    assert np.isfinite(exact).all()
    got = run_all(w, u, k, v)
    for name, x in got.items():
        assert np.isfinite(x).all(), name
    err = errors(got, exact, scale)
    f64_bound = 1e-10 if K <= 100 else 1e-15 * K
    for name, e in err.items():
        bound = 1e-6 * max(K, 1) if "float32" in name else f64_bound
        assert e <= bound, f"K={K}: {name} error {e:.2e} > {bound:.0e} ({err})"


def test_positive_values_plain_relative_error():
    """With v > 0 nothing cancels: then the plain relative error is the one bounded."""
    w, u, k, v = adversarial(100, seed=7)
    v = np.abs(v) + 0.1
    exact, _ = exact_wkv(w, u, k, v)
    for name, x in run_all(w, u, k, v).items():
        rel = np.max(np.abs(x - exact) / exact)
        assert rel <= (1e-4 if "float32" in name else 1e-10), f"{name}: {rel:.2e}"


keys = st.floats(-100, 100, allow_nan=False)


@settings(max_examples=100)
@given(time_decay=st.floats(-20, 20), u=st.floats(-100, 100),
       k=st.lists(st.one_of(keys, st.sampled_from([-100.0, 0.0, 100.0])), min_size=1, max_size=12),
       repeat=st.integers(1, 10), v=st.floats(-10, 10, allow_nan=False))
@example(time_decay=0.0, u=0.0, k=[0.0], repeat=1, v=1.0)  # the only value is 0: so is the output
def test_wkv_float64_random_extremes(time_decay, u, k, repeat, v):
    """One channel, any decay in [-20, 20], keys in [-100, 100] each repeated `repeat` times."""
    k = np.repeat(np.array(k), repeat)[:, None]
    vs = (v + np.arange(len(k)) % 3 - 1.0)[:, None]  # values of both signs, changing
    w, uu = np.array([-np.exp(time_decay)]), np.array([u])
    exact, scale = exact_wkv(w, uu, k, vs)
    for fn in (wkv_reference, wkv_parallel, wkv_forward):
        got = fn(w, uu, k[None], vs[None])[0][0]
        assert np.all(np.abs(got - exact) <= 1e-10 * scale), fn.__name__


# -- a very long input through a tiny model --------------------------------------------------------

LONG = int(os.environ.get("RWKV_NP_LONG_TOKENS", "0")) or None


def _tiny_model_weights():
    config = RwkvConfig(vocab_size=16, hidden_size=16, num_hidden_layers=2, intermediate_size=32)
    sd = random_state_dict(config, seed=5)
    # The extremes of time_decay in every layer: channels that forget nothing in 1e5 tokens
    # (w = -2e-9: their num/den grow with every token) and channels that forget at once.
    sd["rwkv.blocks.0.attention.time_decay"][:4] = [-20, -20, 20, 20]
    sd["rwkv.blocks.1.attention.time_decay"][:4] = [-20, -10, 10, 20]
    return config, sd


def _run_chunked(model, ids, chunk):
    """Feed ids in chunks, carrying the state; every logit must be finite."""
    state, out = None, None
    for start in range(0, len(ids), chunk):
        out = model(ids[start:start + chunk], state=state)
        assert np.isfinite(out.logits).all(), f"non-finite logits in tokens {start}..{start + chunk}"
        state = out.state
    return out.logits[0, -1], state


@pytest.mark.parametrize("tokens", [
    20_000,
    pytest.param(100_000, marks=[pytest.mark.slow, pytest.mark.skipif(
        not os.environ.get("RWKV_NP_SLOW"), reason="the 100,000-token run: set RWKV_NP_SLOW=1")]),
])
def test_long_input_float32_tracks_float64(tokens):
    """`tokens` random tokens in chunks of 4096 with state: finite throughout, memory bounded by
    the chunk (not the input), and the float32 logits at the end within 1e-4 (relative to the
    largest) of the float64 ones. Measured at 100,000 tokens: 4e-6."""
    config, sd = _tiny_model_weights()
    ids = np.random.default_rng(1).integers(0, config.vocab_size, tokens)
    tracemalloc.start()
    try:
        logits32, state32 = _run_chunked(RwkvForCausalLM(config, sd, dtype="float32"), ids, 4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MiB: memory grows with the input"
    logits64, state64 = _run_chunked(RwkvForCausalLM(config, sd, dtype="float64"), ids, 4096)
    rel = np.max(np.abs(logits32 - logits64)) / np.max(np.abs(logits64))
    assert rel <= 1e-4, f"float32 drifted from float64 by {rel:.2e} after {tokens} tokens"
    for s32, s64 in zip(state32, state64):
        assert np.isfinite(s32).all() and np.isfinite(s64).all()
