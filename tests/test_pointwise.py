"""rwkv_np/pointwise.py: the channel mix's compiled activations against NumPy in float64, both
builds (one core, all cores) bit for bit, and the non-finite values NumPy's forms give."""
import numpy as np
import pytest

from rwkv_np import pointwise


def _inputs(dtype, rows=37, cols=53):
    x = np.random.default_rng(0).standard_normal((rows, cols)) * 30  # past exp's float32 range
    x[0, :5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_square(dtype):
    x = _inputs(dtype)
    want = np.maximum(x.astype(np.float64), 0) ** 2
    for build in (pointwise._relu_square_1, pointwise._relu_square_n):
        got = x.copy()
        build(got)
        np.testing.assert_array_equal(got, want.astype(dtype))  # one rounding of an exact square


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_mul(dtype):
    r, v = _inputs(dtype), _inputs(dtype)[::-1].copy()
    with np.errstate(over="ignore", invalid="ignore"):
        want = v.astype(np.float64) / (1 + np.exp(-r.astype(np.float64)))
    outs = []
    for build in (pointwise._sigmoid_mul_1, pointwise._sigmoid_mul_n):
        got = v.copy()
        build(r, got)
        outs.append(got)
    np.testing.assert_array_equal(outs[0], outs[1])
    finite = np.isfinite(want)
    tol = 4 * np.finfo(dtype).eps
    # float32: e^r below float32's normal range is 0 (exp32, and NumPy's 1 / (1 + inf) alike), so
    # products that small are 0 here where float64 keeps ~1e-37
    atol = 0 if dtype == np.float64 else 1e-35
    np.testing.assert_allclose(outs[0][finite], want[finite], rtol=tol, atol=atol)
    np.testing.assert_array_equal(np.isnan(outs[0]), np.isnan(want))


def test_dispatch_by_size(monkeypatch):
    """The wrappers take the one-core build below PARALLEL_MIN_ELEMENTS and the parallel one from
    there (recorded by wrapping both builds), with the numbers of the build they took."""
    calls = []
    for name in ("_relu_square_1", "_relu_square_n", "_sigmoid_mul_1", "_sigmoid_mul_n"):
        build = getattr(pointwise, name)
        monkeypatch.setattr(pointwise, name, lambda *a, _b=build, _n=name: (calls.append(_n), _b(*a))[1])
    n = pointwise.PARALLEL_MIN_ELEMENTS
    for rows, cols, want in ((n // 64 - 1, 64, "1"), (n // 64, 64, "n")):
        x = _inputs(np.float32, rows, cols)
        a, b = x.copy(), x.copy()
        pointwise.relu_square(a)
        pointwise.sigmoid_mul(x, b)
        assert calls[-2:] == [f"_relu_square_{want}", f"_sigmoid_mul_{want}"]
        np.testing.assert_array_equal(a, np.where(x < 0, 0, x * x))
