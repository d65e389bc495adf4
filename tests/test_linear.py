"""linear.py: every storage and every kernel path (N = 1 matvec, small-N matmat, BLAS) against
float64 numpy products, and the storages against the float32 weight within their rounding error.

References: float64 `x @ W.T` (numpy); numpy's own float16 conversion; hand-worked bfloat16
roundings and, when torch is installed, torch's `.to(torch.bfloat16)`."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numba import njit

from rwkv_np import gemm, linear as lin, set_threads
from rwkv_np.errors import InputError
from rwkv_np.linear import linear
from rwkv_np.storage import Bfloat16, Int8Weight, dequantize, embedding_rows, packed, prepare_weight

STORAGES = ["float32", "float64", "float16", "bfloat16", "int8", "int8+cols"]
NS = [1, 3, 8, 64]  # matvec, matmat, matmat, BLAS
SHAPES = [(37, 29), (5, 131), (130, 7), (1, 1)]  # odd (out, in): no vector-width multiples


def make(storage, W):
    if storage == "int8+cols":
        return prepare_weight(W, "int8", col_scales=True)
    return prepare_weight(W, storage)


def random_weight(rng, shape):
    W = rng.standard_normal(shape).astype(np.float32)
    W[:, 0] *= 20  # an outlier column, so column scales matter
    return W


def f64(a):
    return np.asarray(a, dtype=np.float64)


def x_rounding(Wp, x):  # -> (N, out) bound on the error of rounding x for int8 weights, or 0
    """Rows of float32 x (up to SMALL_N of them) against int8 weights are rounded to int16
    levels, each row on its own scale (x * col_scale, if any): at most (2**31 - 1) // (127 * in)
    levels, so that the int32 sums cannot overflow. Each element moves by at most half a step
    (0.51: the float32 product x * levels / max rounds too), so y[n, i] moves by at most that
    times sum_j |q[i, j]| * row_scale[i]."""
    if not isinstance(Wp, Int8Weight) or x.shape[0] > lin.SMALL_N or x.dtype != np.float32:
        return 0.0
    xc = f64(x) * (1.0 if Wp.col_scale is None else f64(Wp.col_scale))
    step = np.abs(xc).max(axis=1, keepdims=True) / min(32767, (2 ** 31 - 1) // (127 * x.shape[1]))
    return 0.51 * step * (np.abs(f64(Wp.q)).sum(axis=1) * f64(Wp.row_scale))[None, :]


def assert_close_to_product(y, x, D, rel, Wp=None):
    """|y - x @ D.T| <= rel * (|x| @ |D|.T): the error bound of a sum of rounded products, plus
    what rounding x adds when Wp (the stored weight D stands for) is int8."""
    ref = f64(x) @ f64(D).T
    bound = rel * (np.abs(f64(x)) @ np.abs(f64(D)).T) + x_rounding(Wp, x) + 1e-30
    assert y.shape == ref.shape
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("storage", STORAGES)
def test_linear_matches_float64_product_of_the_stored_matrix(storage, N, shape):
    rng = np.random.default_rng(N * 1000 + shape[0])
    W = random_weight(rng, shape)
    Wp = make(storage, W)
    x = rng.standard_normal((N, shape[1])).astype(np.float32)
    y = linear(x, Wp)
    assert y.dtype == np.float32 and y.shape == (N, shape[0])
    assert_close_to_product(y, x, dequantize(Wp), rel=1e-5, Wp=Wp)


@pytest.mark.parametrize("shape", [(37, 16), (6, 1040), (130, 48)])
@pytest.mark.parametrize("N", [2, 4, 5, 8, 11, 16])
@pytest.mark.parametrize("storage", STORAGES)
def test_batches_of_widths_the_tile_takes(storage, N, shape):
    # in % 16 == 0 (1040: two of dot_tile's column chunks and a piece), N up to SMALL_N, rows of
    # x left past the last four (N = 5, 11) and an odd weight row left (37)
    rng = np.random.default_rng(N * 1000 + shape[0])
    Wp = make(storage, random_weight(rng, shape))
    x = rng.standard_normal((N, shape[1])).astype(np.float32)
    y = linear(x, Wp)
    assert_close_to_product(y, x, dequantize(Wp), rel=1e-5, Wp=Wp)
    if storage.startswith("int8"):  # the same integer sums as one row at a time
        np.testing.assert_array_equal(y, np.concatenate([linear(x[n:n + 1], Wp) for n in range(N)]))


@njit
def _by_jobs(W, x, y, per):  # y = x @ W.T as a token step runs it: blocks of `per` rows
    xa = lin.activations(W, x)
    for job in range(lin.jobs(W[0].shape[0], per)):
        lin.block(W, xa, y, job, x.shape[1], per)


@pytest.mark.parametrize("storage", ["float32", "float16", "bfloat16", "int8", "int4", "int5"])
def test_a_rows_bits_do_not_depend_on_its_job(storage):
    # The token steps split each matrix into jobs of linear.job_rows rows (24 for batches); the
    # batch tile takes 3 or 2 rows at a time, so other job sizes (32, 7) end in part tiles. Every
    # row must still get the same bits as with 24 (the parallel-build tests rely on it).
    rng = np.random.default_rng(7)
    Wt, _ = packed(prepare_weight(random_weight(rng, (40, 64)), storage))
    x = rng.standard_normal((8, 64)).astype(np.float32)
    want = np.empty((8, 40), np.float32)
    _by_jobs(Wt, x, want, 24)
    for per in (32, 7):
        got = np.empty((8, 40), np.float32)
        _by_jobs(Wt, x, got, per)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("storage, per_element", [
    ("float32", 0.0), ("float16", 2.0 ** -11), ("bfloat16", 2.0 ** -8)])
def test_float_storages_stay_within_their_rounding_of_the_original(storage, per_element, N):
    rng = np.random.default_rng(N)
    W = random_weight(rng, (70, 45))
    x = rng.standard_normal((N, 45)).astype(np.float32)
    # relative rounding of each weight (half an ulp) plus float32 accumulation
    assert_close_to_product(linear(x, make(storage, W)), x, W, rel=per_element + 1e-5)


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("storage", ["int8", "int8+cols"])
def test_int8_stays_within_half_a_step_per_weight(storage, N):
    rng = np.random.default_rng(N)
    W = random_weight(rng, (70, 45))
    Wp = make(storage, W)
    x = rng.standard_normal((N, 45)).astype(np.float32)
    y = linear(x, Wp)
    cols = np.ones(45) if Wp.col_scale is None else f64(Wp.col_scale)
    step = f64(Wp.row_scale)[:, None] * cols[None, :]             # (out, in) quantization step
    bound = 0.5 * np.abs(f64(x)) @ step.T + 1e-5 * np.abs(f64(x)) @ np.abs(f64(W)).T + x_rounding(Wp, x)
    assert np.all(np.abs(y - f64(x) @ f64(W).T) <= bound)


def test_int8_row_sums_cannot_overflow():
    # The worst case of the int32 sums: every weight and every element of x at full scale.
    n = 20000
    Wp = prepare_weight(np.ones((3, n), np.float32), "int8")  # q = 127 everywhere
    y = linear(np.full((1, n), -2.5, np.float32), Wp)
    np.testing.assert_allclose(y, -2.5 * n, rtol=1e-6)


@pytest.mark.parametrize("size", [1e-39, 1e-20, 1e30])
def test_int8_rounding_of_tiny_and_huge_activations(size):
    # A subnormal largest element must not overflow the rounding (levels / max).
    rng = np.random.default_rng(3)
    Wp = prepare_weight(random_weight(rng, (30, 40)), "int8")
    x = (rng.standard_normal((1, 40)) * size).astype(np.float32)
    assert_close_to_product(linear(x, Wp), x, dequantize(Wp), rel=1e-5, Wp=Wp)


def test_int8_rows_of_zeros_nan_and_inf_in_a_batch():
    # Each row is rounded on its own scale: a zero row gives zeros, a row holding NaN or inf gives
    # NaN (as a float product would: inf * q sums to inf - inf somewhere), and the finite rows
    # beside them keep their bound.
    rng = np.random.default_rng(4)
    Wp = prepare_weight(random_weight(rng, (48, 64)), "int8")
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[1] = 0.0
    x[2, 7] = np.nan
    x[3, 9] = -np.inf
    x[4] = -0.0
    y = linear(x, Wp)
    assert np.all(y[1] == 0) and np.all(y[4] == 0)
    assert np.all(np.isnan(y[2])) and np.all(np.isnan(y[3]))
    assert_close_to_product(y[:1], x[:1], dequantize(Wp), rel=1e-5, Wp=Wp)


def test_int8_quantization_uses_the_full_range_of_each_row():
    rng = np.random.default_rng(1)
    W = random_weight(rng, (20, 33))
    W[3] = 0.0                                    # an all-zero row must not divide by zero
    for Wp in (prepare_weight(W, "int8"), prepare_weight(W, "int8", col_scales=True)):
        q = Wp.q.astype(int)
        assert q.min() >= -127 and q.max() <= 127
        nonzero = np.arange(20) != 3
        assert np.all(np.abs(q[nonzero]).max(axis=1) == 127)
        assert np.all(q[3] == 0) and np.all(np.isfinite(dequantize(Wp)))
        cols = 1.0 if Wp.col_scale is None else Wp.col_scale[None, :]
        assert np.all(np.abs(dequantize(Wp) - W) <= 0.5 * Wp.row_scale[:, None] * cols * (1 + 1e-6))


@pytest.mark.parametrize("N", NS)
@pytest.mark.parametrize("storage", STORAGES)
def test_float64_activations_give_float64_results(storage, N):
    rng = np.random.default_rng(7)
    W = random_weight(rng, (33, 21))
    Wp = make(storage, W)
    x = rng.standard_normal((N, 21))
    y = linear(x, Wp)
    assert y.dtype == np.float64
    assert_close_to_product(y, x, dequantize(Wp), rel=1e-12 if storage == "float64" else 1e-6)


@pytest.mark.parametrize("N", NS)
def test_16_bit_widening_is_exact_including_subnormals(N):
    # One-hot rows of x select single columns: the products are exact, so y must equal the
    # widened weights bit for bit. float16 reference: numpy's own conversion.
    vals = np.array([0.0, -0.0, 1.0, -2.5, 65504.0, 6.1e-5, 5.96e-8, -3e-7, 1e-6, 0.3333], np.float32)
    W = np.tile(vals, (3, 1))
    W[1] *= -1
    x = np.eye(len(vals), dtype=np.float32)[np.arange(N) % len(vals)]
    for storage in ("float16", "bfloat16"):
        Wp = prepare_weight(W, storage)
        expected = dequantize(Wp)[:, np.arange(N) % len(vals)].T
        np.testing.assert_array_equal(linear(x, Wp), expected)
    np.testing.assert_array_equal(dequantize(prepare_weight(W, "float16")),
                                  W.astype(np.float16).astype(np.float32))


def test_bfloat16_rounds_to_nearest_even():
    # Worked by hand: bfloat16 keeps 8 significant bits; 1 + 2**-8 is a tie -> 1 (even),
    # 1 + 3 * 2**-8 is a tie -> 1 + 2**-6 (even), 1 + 2**-8 + 2**-20 is above the tie -> 1 + 2**-7.
    W = np.array([[1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -(1 + 2 ** -8),
                   np.inf, -np.inf, 3.4e38, 0.0]], np.float32)
    got = dequantize(prepare_weight(W, "bfloat16"))[0]
    np.testing.assert_array_equal(got[:4], [1.0, 1 + 2 ** -6, 1 + 2 ** -7, -1.0])
    assert got[4] == np.inf and got[5] == -np.inf and got[7] == 0.0
    assert np.isinf(got[6])                     # above the largest bfloat16 (3.39e38) + half a step
    nan = dequantize(prepare_weight(np.array([[np.nan]], np.float32), "bfloat16"))
    assert np.isnan(nan).all()


def test_bfloat16_bits_match_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    W = (rng.standard_normal((64, 50)) * 10.0 ** rng.integers(-30, 30, (64, 50))).astype(np.float32)
    ours = prepare_weight(W, "bfloat16").view(np.ndarray)
    theirs = torch.from_numpy(W).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("storage", STORAGES)
def test_blocked_gemm_covers_every_row(storage, monkeypatch):
    # Force blocks of 3 rows so that the widen-then-BLAS path crosses block edges.
    monkeypatch.setattr(gemm, "_BLOCK_BYTES", 4 * 29 * 3)
    rng = np.random.default_rng(5)
    W = random_weight(rng, (37, 29))
    Wp = make(storage, W)
    x = rng.standard_normal((40, 29)).astype(np.float32)
    assert_close_to_product(linear(x, Wp), x, dequantize(Wp), rel=1e-5, Wp=Wp)


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("threads", [1, 2])
def test_gemm_tasks_cover_every_row(storage, threads, monkeypatch):
    # Tiny tasks (8-row blocks, 3-row widening) so that a prompt's product is many pool tasks
    # whose blocks end inside a widening block and at the last, partial one; and on one thread,
    # one task for everything. numpy's OpenBLAS thread count is left as it was.
    from rwkv_np.threads import _openblas_threads
    monkeypatch.setattr(gemm, "_TASK_FLOPS", 1)
    monkeypatch.setattr(gemm, "_TASK_ROWS", 8)
    monkeypatch.setattr(gemm, "_BLOCK_BYTES", 4 * 29 * 3)
    rng = np.random.default_rng(6)
    Wp = make(storage, random_weight(rng, (61, 29)))
    x = rng.standard_normal((40, 29)).astype(np.float32)
    blas_threads = [get() for _, get in _openblas_threads()]
    try:
        set_threads(threads)
        assert_close_to_product(linear(x, Wp), x, dequantize(Wp), rel=1e-5, Wp=Wp)
    finally:
        set_threads()
    assert [get() for _, get in _openblas_threads()] == blas_threads


@given(out=st.integers(1, 70), n_in=st.integers(1, 70), N=st.sampled_from([1, 2, 5, 16, 17, 30]),
       storage=st.sampled_from(STORAGES), seed=st.integers(0, 2 ** 32 - 1))
def test_any_shape_any_path(out, n_in, N, storage, seed):
    rng = np.random.default_rng(seed)
    Wp = make(storage, random_weight(rng, (out, n_in)))
    x = rng.standard_normal((N, n_in)).astype(np.float32)
    assert_close_to_product(linear(x, Wp), x, dequantize(Wp), rel=1e-5, Wp=Wp)


@pytest.mark.parametrize("storage", STORAGES)
def test_one_thread_gives_the_same_bits(storage):
    # Each output row is one thread's dot product, so the thread count cannot change it.
    rng = np.random.default_rng(11)
    Wp = make(storage, random_weight(rng, (300, 64)))
    x = rng.standard_normal((3, 64)).astype(np.float32)
    before = [linear(x[:1], Wp), linear(x, Wp)]
    try:
        assert set_threads(1) == 1
        after = [linear(x[:1], Wp), linear(x, Wp)]
    finally:
        set_threads()
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("storage", STORAGES)
def test_parallel_build_gives_the_same_bits(storage, monkeypatch):
    # Products this small run on one core (PARALLEL_MIN_WEIGHTS), the build the other tests check;
    # larger ones run the parallel build of the same body, which must give the same bits.
    rng = np.random.default_rng(12)
    Wp = make(storage, random_weight(rng, (300, 64)))
    x = rng.standard_normal((8, 64)).astype(np.float32)
    serial = [linear(x[:n], Wp) for n in (1, 3, 8)]
    monkeypatch.setattr(lin, "PARALLEL_MIN_WEIGHTS", 0)
    for n, want in zip((1, 3, 8), serial):
        np.testing.assert_array_equal(linear(x[:n], Wp), want)


def test_non_contiguous_activations():
    rng = np.random.default_rng(2)
    W = random_weight(rng, (9, 10))
    x = rng.standard_normal((3, 20)).astype(np.float32)[:, ::2]
    for storage in STORAGES:
        Wp = make(storage, W)
        assert_close_to_product(linear(x, Wp), x, dequantize(Wp), rel=1e-5, Wp=Wp)


@pytest.mark.parametrize("storage", STORAGES)
def test_embedding_rows_are_the_stored_rows(storage):
    rng = np.random.default_rng(4)
    E = make(storage, random_weight(rng, (50, 12)))
    ids = np.array([0, 49, 7, 7])
    rows = embedding_rows(E, ids)
    assert rows.dtype == np.float32 and rows.shape == (4, 12)
    np.testing.assert_allclose(rows, dequantize(E)[ids].astype(np.float32), rtol=1e-7)
    assert embedding_rows(E, ids, np.float64).dtype == np.float64


def test_bad_input_is_a_clear_error():
    W = prepare_weight(np.ones((4, 3), np.float32), "int8")
    with pytest.raises(InputError, match="does not fit"):
        linear(np.ones((2, 5), np.float32), W)
    with pytest.raises(InputError, match="does not fit"):
        linear(np.ones(3, np.float32), W)
    with pytest.raises(InputError, match="storage"):
        prepare_weight(np.ones((4, 3)), "int3")
    with pytest.raises(InputError, match="2-D float"):
        prepare_weight(np.ones(3), "float32")
    with pytest.raises(InputError, match="unsupported weight"):
        linear(np.ones((1, 3), np.float32), np.ones((4, 3), np.int8))
    with pytest.raises(InputError, match="token id 4 is outside"):
        embedding_rows(W, [0, 4])
    with pytest.raises(InputError, match="token id -1"):
        embedding_rows(W, [-1])
    with pytest.raises(InputError, match="threads"):
        set_threads(0)


def test_weight_classes_report_shape_and_bytes():
    W = np.ones((6, 5), np.float32)
    b, q = prepare_weight(W, "bfloat16"), prepare_weight(W, "int8", col_scales=True)
    assert isinstance(b, Bfloat16) and b.shape == (6, 5) and b.nbytes == 60
    assert isinstance(q, Int8Weight) and q.shape == (6, 5) and q.nbytes == 30 + 24 + 20
    assert prepare_weight(W, "float16").dtype == np.float16
