"""WKV's three forms agree: parallel == sequential, chunked-with-state == whole, Numba == float64.

The float64 sequential recurrence (`wkv_reference`) is the oracle here; tests/test_numerics.py
checks the oracle itself against an mpmath evaluation of the exact (non-log-space) formula.
"""
import os
import subprocess
import sys

import numpy as np
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rwkv_np.v4 import kernels
from rwkv_np.v4.kernels import wkv_forward
from rwkv_np.v4.wkv import EMPTY_MAX, wkv_parallel, wkv_reference


def floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def wkv_inputs(draw, max_b=3, max_t=40, max_c=9, with_state=None):
    """w, u, k, v and maybe an incoming state, at the issue's adversarial magnitudes:
    k in +-60, time_decay in [-8, 4] (so w = -exp(.) in [-54.6, -3e-4]), u in +-5, v in +-1e3."""
    B, T, C = draw(st.integers(1, max_b)), draw(st.integers(1, max_t)), draw(st.integers(1, max_c))
    w = -np.exp(draw(hnp.arrays(np.float64, C, elements=floats(-8, 4))))
    u = draw(hnp.arrays(np.float64, C, elements=floats(-5, 5)))
    k = draw(hnp.arrays(np.float64, (B, T, C), elements=floats(-60, 60)))
    v = draw(hnp.arrays(np.float64, (B, T, C), elements=floats(-1e3, 1e3)))
    state = None
    if with_state or (with_state is None and draw(st.booleans())):
        b = draw(hnp.arrays(np.float64, (B, C), elements=floats(1e-3, 10)))
        a = b * draw(hnp.arrays(np.float64, (B, C), elements=floats(-1e3, 1e3)))
        p = draw(hnp.arrays(np.float64, (B, C), elements=floats(-60, 60)))
        state = (a, b, p)
    return w, u, k, v, state


def assert_wkv_close(got, want, v, rtol):
    """Outputs are weighted averages of values: compare on the scale of the values.
    a is on the scale of b * values, b and p on their own."""
    (out, (a, b, p)), (out0, (a0, b0, p0)) = got, want
    vscale = max(np.abs(v).max(), 1.0)
    np.testing.assert_allclose(out, out0, rtol=rtol, atol=rtol * vscale)
    np.testing.assert_allclose(b, b0, rtol=rtol, atol=0)
    np.testing.assert_allclose(a, a0, rtol=rtol, atol=rtol * vscale * np.abs(b0).max())
    np.testing.assert_allclose(p, p0, rtol=rtol, atol=0)


@given(wkv_inputs(), st.integers(1, 17))
def test_parallel_form_equals_sequential(inputs, chunk):
    w, u, k, v, state = inputs
    assert_wkv_close(wkv_parallel(w, u, k, v, state, chunk=chunk), wkv_reference(w, u, k, v, state), v, 1e-10)


@given(wkv_inputs(), st.lists(st.integers(1, 39), max_size=4))
def test_chunked_with_state_equals_whole(inputs, cuts):
    w, u, k, v, state = inputs
    T = k.shape[1]
    bounds = [0] + sorted({c for c in cuts if c < T}) + [T]
    outs, s = [], state
    for t0, t1 in zip(bounds, bounds[1:]):
        o, s = wkv_forward(w, u, k[:, t0:t1], v[:, t0:t1], s)
        outs.append(o)
    whole = wkv_forward(w, u, k, v, state)
    # The same operations in the same order: bit-identical, not merely close.
    np.testing.assert_array_equal(np.concatenate(outs, axis=1), whole[0])
    for x, y in zip(s, whole[1]):
        np.testing.assert_array_equal(x, y)


@given(wkv_inputs())
def test_numba_float64_equals_reference(inputs):
    w, u, k, v, state = inputs
    assert_wkv_close(wkv_forward(w, u, k, v, state), wkv_reference(w, u, k, v, state), v, 1e-12)


@given(wkv_inputs())
def test_numba_float32_within_float32_tolerance(inputs):
    w, u, k, v, state = inputs
    f32 = lambda x: np.asarray(x, np.float32)
    # The float64 reference on the float32-rounded inputs isolates the kernel's own rounding.
    w, u, k, v = map(f32, (w, u, k, v))
    state32 = None if state is None else tuple(map(f32, state))
    got = wkv_forward(w, u, k, v, state32)
    assert all(x.dtype == np.float32 for x in (got[0], *got[1]))
    want = wkv_reference(w, u, k, v, state32)
    # Error model of float32 log-space: each step rounds p + w (absolute error ~|p| 2^-24), which
    # is then exponentiated, so a relative error of ~|p| 2^-24 per step, compounding over T steps.
    T = k.shape[1]
    pmax = max(np.abs(k).max() + np.abs(u).max(), 0 if state is None else np.abs(state[2]).max())
    assert_wkv_close(got, want, v, 1e-5 + 2 * T * pmax * 2.0 ** -24)


@given(wkv_inputs(max_b=4, with_state=True))
def test_batch_rows_are_independent(inputs):
    w, u, k, v, state = inputs
    out, (a, b, p) = wkv_forward(w, u, k, v, state)
    for i in range(k.shape[0]):
        row = wkv_forward(w, u, k[i:i + 1], v[i:i + 1], tuple(s[i:i + 1] for s in state))
        np.testing.assert_array_equal(row[0][0], out[i])
        np.testing.assert_array_equal(row[1][0][0], a[i])


def test_empty_state_means_no_history():
    """With p = -1e38 the first output is v_0 exactly, whatever a and b hold."""
    rng = np.random.default_rng(1)
    k, v = rng.normal(size=(1, 1, 5)), rng.normal(size=(1, 1, 5))
    w, u = -np.exp(rng.normal(size=5)), rng.normal(size=5)
    junk = (np.full((1, 5), 1e30), np.full((1, 5), 1e30), np.full((1, 5), EMPTY_MAX))
    for f in (wkv_reference, wkv_parallel, wkv_forward):
        np.testing.assert_array_equal(f(w, u, k, v, junk)[0], v)
        np.testing.assert_array_equal(f(w, u, k, v)[0], v)


def test_exact_recurrence_small_values():
    """Against the un-stabilized textbook recurrence where it cannot overflow."""
    rng = np.random.default_rng(2)
    B, T, C = 2, 30, 4
    w, u = -np.exp(rng.uniform(-3, 1, C)), rng.uniform(-1, 1, C)
    k, v = rng.uniform(-3, 3, (B, T, C)), rng.normal(size=(B, T, C))
    N = D = np.zeros((B, C))
    want = np.empty((B, T, C))
    for t in range(T):
        want[:, t] = (N + np.exp(u + k[:, t]) * v[:, t]) / (D + np.exp(u + k[:, t]))
        N = np.exp(w) * N + np.exp(k[:, t]) * v[:, t]
        D = np.exp(w) * D + np.exp(k[:, t])
    for f in (wkv_reference, wkv_parallel, wkv_forward):
        out, (a, b, p) = f(w, u, k, v)
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(a * np.exp(p), N, rtol=1e-12)
        np.testing.assert_allclose(b * np.exp(p), D, rtol=1e-12)


def test_parallel_build_gives_the_same_bits(monkeypatch):
    """Small calls run the one-core build (the one the tests above reach); prompts with enough
    work run the parallel build of the same loop, which must give the same bits."""
    rng = np.random.default_rng(3)
    B, T, C = 2, 7, 150  # three channel blocks, the last one short
    w, u = -np.exp(rng.normal(size=C)).astype(np.float32), rng.normal(size=C).astype(np.float32)
    k, v = rng.normal(size=(2, B, T, C)).astype(np.float32)
    serial = wkv_forward(w, u, k, v)
    monkeypatch.setattr(kernels, "PARALLEL_MIN_WORK", 0)
    parallel = wkv_forward(w, u, k, v)
    for got, want in zip((parallel[0], *parallel[1]), (serial[0], *serial[1])):
        np.testing.assert_array_equal(got, want)


CACHED_BUILD = """
import sys
import numpy as np
from rwkv_np.v4 import kernels
kernel = kernels._wkv_kernel_parallel if sys.argv[1] == "parallel" else kernels._wkv_kernel
z = np.zeros((1, 2, 8), np.float32)
state = np.zeros((1, 8), np.float32)
kernel(z[0, 0], z[0, 0], z, z, state, state.copy(), np.full((1, 8), -1e38, np.float32), z.copy())
print(len(kernel.stats.cache_hits))
"""


def test_one_core_and_parallel_builds_are_cached_apart(tmp_path):
    """Numba keys its disk cache by function: two njit() of one function shared an entry, and
    later processes ran whichever build was compiled first. Each build is its own function now
    (also in linear.py and decode.py), so compiling one must leave the other uncached."""
    def cache_hits(build):
        return subprocess.run([sys.executable, "-c", CACHED_BUILD, build], cwd=REPO, check=True,
                              env=dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path)),
                              capture_output=True, text=True).stdout.split()[-1]
    assert cache_hits("serial") == "0"
    assert cache_hits("parallel") == "0"  # not served the one-core build
    assert cache_hits("parallel") == "1"  # its own entry
