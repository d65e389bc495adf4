"""RWKV-6's WKV on the decays RWKV-6 itself makes, and split-with-state == whole for the model.

RWKV-6 runs RWKV-5's WKV (v5/wkv.py, v5/kernels.py; test_v5_wkv.py holds them to the recurrence
on synthetic decays). Here the log-decays come from RWKV-6's own decay path, reference.log_decay:
λ_t = -exp(time_decay + tanh(x W1) W2), with time_decay drawn up to 800, past float64's exp range,
so λ runs from about -1e-3 through -1e5 to -inf before the clamp. Checked: chunked == sequential
(float64, <= 1e-10 relative), Numba float64 == readable (<= 1e-12), float32 within test_v5_wkv's
error model, and the fast model fed a prompt in two parts with the state between == one call.
"""
import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st
from test_v5_wkv import term_magnitude
from test_v6_model import MULTI, random_params

from rwkv_np.v5.kernels import wkv5_forward
from rwkv_np.v5.wkv import LOG_DECAY_FLOOR, wkv5_chunked, wkv5_sequential
from rwkv_np.v6 import reference
from rwkv_np.v6.model import Rwkv6ForCausalLM

DECAY_RANGES = {"trained": (-6.0, 2.0), "strong": (2.0, 12.0), "beyond_exp": (600.0, 800.0),
                "mixed": (-8.0, 800.0)}


def v6_inputs(seed, shape, decay_range, with_state):
    """(r, λ, k, v) (B, T, H, N) with λ from reference.log_decay on random x, LoRA and
    time_decay (uniform in the range), u (H, N), state (B, H, N, N) or None; float64."""
    rng = np.random.default_rng(seed)
    B, T, H, N = shape
    C, D = H * N, 6
    xw = rng.normal(size=(B, T, C))
    w_log = reference.log_decay(xw, time_decay=rng.uniform(*DECAY_RANGES[decay_range], (1, 1, C)),
                                time_decay_w1=rng.normal(0, 1, (C, D)), time_decay_w2=rng.normal(0, 1, (D, C)))
    r, k, v = (rng.normal(size=shape) for _ in range(3))
    state = rng.normal(size=(B, H, N, N)) if with_state else None
    return (r, w_log.reshape(shape), k, v, rng.normal(size=(H, N))), state


def rel(x, ref):
    return np.max(np.abs(x - ref)) / np.max(np.abs(ref))


shapes = st.tuples(st.integers(1, 2), st.integers(1, 40), st.integers(1, 3), st.sampled_from([1, 2, 4, 8, 16]))
cases = dict(seed=st.integers(0, 2**32 - 1), shape=shapes, decay_range=st.sampled_from(sorted(DECAY_RANGES)),
             with_state=st.booleans())


@given(**cases, chunk=st.integers(1, 45))
@example(seed=11, shape=(1, 40, 2, 16), decay_range="mixed", with_state=True, chunk=17)
def test_chunked_equals_sequential_on_v6_decays(seed, shape, decay_range, with_state, chunk):
    inputs, state = v6_inputs(seed, shape, decay_range, with_state)
    assert np.all(np.isfinite(inputs[1])) and inputs[1].min() >= LOG_DECAY_FLOOR
    y, S = wkv5_sequential(*inputs, state)
    yc, Sc = wkv5_chunked(*inputs, state, chunk=chunk)
    assert np.all(np.isfinite(yc)) and np.all(np.isfinite(Sc))
    assert rel(yc, y) < 1e-10
    assert rel(Sc, S) < 1e-10


@given(**cases)
def test_kernel_float64_equals_readable_and_float32_within_error_model(seed, shape, decay_range, with_state):
    inputs, state = v6_inputs(seed, shape, decay_range, with_state)
    y, S = wkv5_sequential(*inputs, state)
    yk, Sk = wkv5_forward(*inputs, state)
    assert rel(yk, y) < 1e-12 and rel(Sk, S) < 1e-12
    inputs32 = [x.astype(np.float32) for x in inputs]
    state32 = None if state is None else state.astype(np.float32)
    inputs64 = [x.astype(np.float64) for x in inputs32]
    state64 = None if state32 is None else state32.astype(np.float64)
    y64, S64 = wkv5_forward(*inputs64, state64)
    y32, S32 = wkv5_forward(*inputs32, state32)
    B, T, H, N = shape
    eps, sigma = np.finfo(np.float32).eps, term_magnitude(*inputs64, state64)
    assert np.max(np.abs(S32 - S64)) <= (T + 3) * eps * sigma
    assert np.max(np.abs(y32 - y64)) <= (N + T + 3) * eps * sigma * np.abs(inputs64[0]).sum(-1).max()


PARAMS = {rng: random_params(MULTI, seed=rng, decay=DECAY_RANGES[name]) for rng, name in enumerate(("trained", "mixed"))}


@given(which=st.sampled_from(sorted(PARAMS)), seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 3),
       length=st.integers(1, 24), split=st.integers(0, 24), dtype=st.sampled_from(["float32", "float64"]))
def test_model_split_with_state_equals_whole(which, seed, batch, length, split, dtype):
    """The fast model on a prompt in two calls (the state of the first passed to the second) gives
    the logits and final state of one call: float64 within 1e-12, float32 within 1e-4, relative
    (the token shift and WKV continue exactly; only matrix products over fewer rows round
    differently). Float32's bound is looser than the 1e-5 of test_v6_model.py's fixed cases: over
    600 random prompts on these two random models the two calls differed by up to 1.0e-5, and the
    float32 logits from the float64 reference by up to 1.7e-5, the rounding amplified in the
    last layer's ln_x (a per-head group norm of small-variance heads divides by sqrt(var + eps))."""
    model = Rwkv6ForCausalLM(MULTI, PARAMS[which], dtype)
    ids = np.random.default_rng(seed).integers(0, MULTI.vocab_size, (batch, length))
    split = min(split, length - 1)
    whole = model(ids)
    first = model(ids[:, :split]) if split else None
    second = model(ids[:, split:], state=first.state if first else None)
    tol = {"float32": 1e-4, "float64": 1e-12}[dtype]
    logits = second.logits if first is None else np.concatenate([first.logits, second.logits], axis=1)
    assert rel(logits, whole.logits) < tol
    for got, want in zip(second.state, whole.state):
        assert rel(got, want) < tol
