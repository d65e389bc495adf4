"""WKV-7: RWKV-7's time-mixing recurrence, in two readable float64 forms (NumPy only).

Per head (all heads and batch rows are independent), S is an N x N matrix, S[i][j] with i the
value index and j the key index. Each token t brings a receptance r_t, a log-decay λ_t < 0
(w_t = e^{λ_t} in (0, 1), one per key channel), a key k_t, a value v_t and two vectors a_t, b_t
(the model passes a = -kk and b = kk * iclr: a "delta rule" that removes part of what S stored
along kk before writing v k^T; reference.py). The recurrence, exactly:

    S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T
    y_t = S_t r_t                           (S after this token's update)

1. `wkv7_sequential`: the recurrence token by token: the oracle.
2. `wkv7_chunked`:    the same numbers a chunk of tokens at a time, as matrix products over the
                      chunk (the "UT / WY" form), chunks chained through S. Derivation below.

Shapes: r, w_log, k, v, a, b are (B, T, H, N); the state is (B, H, N, N).
"""
from __future__ import annotations

import numpy as np


def _inputs(r, w_log, k, v, a, b, state):
    r, w_log, k, v, a, b = (np.asarray(x, np.float64) for x in (r, w_log, k, v, a, b))
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N)) if state is None else np.array(state, np.float64)
    return (r, w_log, k, v, a, b), S


def wkv7_sequential(r, w_log, k, v, a, b, state=None):  # (B, T, H, N) x 6, (B, H, N, N)
    """Token by token, in float64. Returns y (B, T, H, N) and the new state (B, H, N, N).

    Written out per element, S[i][j] with i the value and j the key index:

        sa_i     = Σ_j S[i][j] a_j                       (S_{t-1} a_t)
        S[i][j] <- S[i][j] w_j + sa_i b_j + v_i k_j
        y_i      = Σ_j S[i][j] r_j
    """
    (r, w_log, k, v, a, b), S = _inputs(r, w_log, k, v, a, b, state)
    w = np.exp(w_log)
    y = np.empty_like(r)
    for t in range(r.shape[1]):
        sa = np.einsum("bhij,bhj->bhi", S, a[:, t])                            # S_{t-1} a_t
        S = (S * w[:, t, :, None, :]                                           # S_{t-1} diag(w_t)
             + sa[..., :, None] * b[:, t, :, None, :]                          # + (S_{t-1} a_t) b_t^T
             + v[:, t, :, :, None] * k[:, t, :, None, :])                      # + v_t k_t^T
        y[:, t] = np.einsum("bhij,bhj->bhi", S, r[:, t])                       # y_t = S_t r_t
    return y, S


def wkv7_chunked(r, w_log, k, v, a, b, state=None, chunk: int = 64):  # shapes as wkv7_sequential
    """A chunk of n tokens at a time, exact (equal to `wkv7_sequential` up to rounding).

    Write u_t = S_{t-1} a_t (a value-sized vector). The update becomes a diagonal decay plus two
    rank-one writes,  S_t = S_{t-1} diag(w_t) + u_t b_t^T + v_t k_t^T,  so, with S_0 the state
    entering the chunk and A_t = λ_1 + ... + λ_t the cumulative log-decay (A_0 = 0, per key j),
    unrolling gives

        S_t = S_0 diag(e^{A_t}) + Σ_{s<=t} (u_s b_s^T + v_s k_s^T) diag(e^{A_t - A_s})         (1)

    Multiplying (1) at t-1 by a_t, and (1) at t by r_t:

        u_t = S_0 (e^{A_{t-1}} ⊙ a_t) + Σ_{s<t}  [ u_s (b_s · e^{A_{t-1}-A_s} ⊙ a_t) + v_s (k_s · e^{A_{t-1}-A_s} ⊙ a_t) ]
        y_t = S_0 (e^{A_t} ⊙ r_t)     + Σ_{s<=t} [ u_s (b_s · e^{A_t-A_s} ⊙ r_t)     + v_s (k_s · e^{A_t-A_s} ⊙ r_t) ]

    Stacking the chunk's vectors as rows (U, V: n x N) and naming the n x n matrices of those
    dot products M^{ab}, M^{ak} (strictly lower triangular) and M^{rb}, M^{rk} (lower, with the
    diagonal), u is the solution of a unit lower-triangular system, solved by forward substitution:

        (I - M^{ab}) U = (a ⊙ e^{A_prev}) S_0^T + M^{ak} V                  ("UT transform")
        Y   = (r ⊙ e^{A}) S_0^T + M^{rb} U + M^{rk} V
        S_n = S_0 diag(e^{A_n}) + U^T (b ⊙ e^{A_n - A}) + V^T (k ⊙ e^{A_n - A})  ("WY" form of the product)

    Every exponent is a difference A_t - A_s with s <= t (or A_{t-1} - A_s with s < t): a sum of
    log-decays, <= 0, so every factor is in (0, 1]. Never split e^{A_t - A_s} into e^{A_t} e^{-A_s}:
    e^{-A_s} grows like e^{0.61 s}, which in float32 loses the small terms and for the v6-style
    unbounded decays overflows. The cost per chunk and head is O(n^2 N) for the pairwise weights
    plus O(n N^2) for the products with S_0: chunks make a prompt matrix products instead of T steps.
    """
    (r, w_log, k, v, a, b), S = _inputs(r, w_log, k, v, a, b, state)
    B, T, H, N = r.shape
    y = np.empty_like(r)
    for start in range(0, T, chunk):
        # This chunk's tokens, heads first: (B, H, n, N).
        rc, lc, kc, vc, ac, bc = (x[:, start:start + chunk].transpose(0, 2, 1, 3) for x in (r, w_log, k, v, a, b))
        n = rc.shape[2]
        Acum = np.concatenate([np.zeros((B, H, 1, N)), np.cumsum(lc, axis=2)], axis=2)  # (B, H, n+1, N)
        A_prev, A = Acum[:, :, :-1], Acum[:, :, 1:]                                    # A_{t-1}, A_t
        t, s = np.arange(n)[:, None], np.arange(n)[None, :]
        # Pairwise decays (B, H, n, n, N), exact zeros where s is not before t (e^{-inf} = 0).
        upto = np.exp(np.where((s <= t)[..., None], A[:, :, :, None] - A[:, :, None], -np.inf))
        before = np.exp(np.where((s < t)[..., None], A_prev[:, :, :, None] - A[:, :, None], -np.inf))
        M_ab = np.einsum("bhtsj,bhtj,bhsj->bhts", before, ac, bc)
        M_ak = np.einsum("bhtsj,bhtj,bhsj->bhts", before, ac, kc)
        M_rb = np.einsum("bhtsj,bhtj,bhsj->bhts", upto, rc, bc)
        M_rk = np.einsum("bhtsj,bhtj,bhsj->bhts", upto, rc, kc)
        # (I - M_ab) U = rhs, by forward substitution: row t needs rows s < t only.
        rhs = np.einsum("bhtj,bhij->bhti", ac * np.exp(A_prev), S) + M_ak @ vc
        U = np.zeros_like(rhs)
        for i in range(n):
            U[:, :, i] = rhs[:, :, i] + np.einsum("bhs,bhsj->bhj", M_ab[:, :, i, :i], U[:, :, :i])
        Y = np.einsum("bhtj,bhij->bhti", rc * np.exp(A), S) + M_rb @ U + M_rk @ vc
        y[:, start:start + n] = Y.transpose(0, 2, 1, 3)
        to_end = np.exp(A[:, :, -1:] - A)                                              # e^{A_n - A_s}
        S = (S * np.exp(A[:, :, -1])[:, :, None, :]
             + np.einsum("bhsi,bhsj->bhij", U, bc * to_end)
             + np.einsum("bhsi,bhsj->bhij", vc, kc * to_end))
    return y, S
