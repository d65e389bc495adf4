"""WKV-5: the time-mixing recurrence of RWKV-5 and RWKV-6, in two readable float64 forms (NumPy only).

Per head (all heads and batch rows are independent), S is an N x N matrix, S[i][j] with i the
KEY index and j the VALUE index. Each token t brings a receptance r_t, a key k_t, a value v_t and
a log-decay λ_t <= 0 per key channel (w_t = e^{λ_t} in [0, 1]); a bonus u (per key channel,
constant) weights the current token. The recurrence, exactly:

    y_t[j]   = Σ_i r_t[i] (S_{t-1}[i][j] + u[i] k_t[i] v_t[j])     (S BEFORE this token's update)
    S_t[i][j] = w_t[i] S_{t-1}[i][j] + k_t[i] v_t[j]

RWKV-5 has one λ per head and channel, the same for every token (λ = -exp(time_decay)); RWKV-6
computes λ_t from each token (λ_t = -exp(time_decay + LoRA(x_t))): unbounded below, so λ_t can be
-1e30 or, from a stored decay of 0, -inf. The forms below take λ per token (B, T, H, N); RWKV-5
passes its constant broadcast over T. Callers clamp λ to LOG_DECAY_FLOOR first (`clamp_log_decay`).

1. `wkv5_sequential`: the recurrence token by token: the oracle.
2. `wkv5_chunked`:    the same numbers a chunk of n tokens at a time, as matrix products over the
                      chunk, chunks chained through S. Derivation in its docstring.

Shapes: r, w_log, k, v are (B, T, H, N); u is (H, N); the state is (B, H, N, N).
"""
from __future__ import annotations

import numpy as np

# e^{-1000} is 0 in float64 and float32 alike: clamping λ here changes no decay, it only keeps every
# sum of log-decays finite (a -inf, or -1e308 + -1e308, would give -inf - -inf = NaN downstream).
LOG_DECAY_FLOOR = -1000.0


def clamp_log_decay(w_log):  # (...) -> (...), same dtype
    """λ = max(λ, LOG_DECAY_FLOOR): the same decays e^λ, every value finite (NaN stays NaN)."""
    return np.maximum(w_log, np.asarray(LOG_DECAY_FLOOR, np.asarray(w_log).dtype))


def _inputs(r, w_log, k, v, u, state):
    r, w_log, k, v, u = (np.asarray(x, np.float64) for x in (r, w_log, k, v, u))
    B, T, H, N = r.shape
    S = np.zeros((B, H, N, N)) if state is None else np.array(state, np.float64)
    return (r, w_log, k, v, u), S


def wkv5_sequential(r, w_log, k, v, u, state=None):  # (B, T, H, N) x 4, u (H, N), state (B, H, N, N)
    """Token by token, in float64. Returns y (B, T, H, N) and the new state (B, H, N, N)."""
    (r, w_log, k, v, u), S = _inputs(r, w_log, k, v, u, state)
    w = np.exp(w_log)
    y = np.empty_like(r)
    for t in range(r.shape[1]):
        kv = k[:, t, :, :, None] * v[:, t, :, None, :]                          # k_t v_t^T (B, H, N, N)
        y[:, t] = np.einsum("bhi,bhij->bhj", r[:, t], S + u[:, :, None] * kv)   # r_t^T (S + diag(u) k v^T)
        S = w[:, t, :, :, None] * S + kv                                        # diag(w_t) S + k_t v_t^T
    return y, S


def wkv5_chunked(r, w_log, k, v, u, state=None, chunk: int = 64):  # shapes as wkv5_sequential
    """A chunk of n tokens at a time, exact (equal to `wkv5_sequential` up to rounding).

    With S_0 the state entering the chunk and tokens numbered 1..n inside it, unrolling the update
    gives, per key channel i (λ_{t,i} is token t's log-decay):

        S_t[i][j] = e^{Σ_{m<=t} λ_m} S_0[i][j] + Σ_{s<=t} e^{Σ_{s<m<=t} λ_m} k_s[i] v_s[j]

    and y_t reads S_{t-1}, so

        y_t = (r_t ⊙ e^{P_t})^T S_0 + Σ_{s<t} [Σ_i r_t[i] k_s[i] e^{D_{ts}[i]}] v_s + [Σ_i r_t[i] u[i] k_t[i]] v_t
        S_n = diag(e^{P_{n+1}}) S_0 + Σ_s diag(e^{E_s}) k_s v_s^T

    with P_t = Σ_{m<t} λ_m (the decay from the chunk's start to just before t), D_{ts} =
    Σ_{s<m<t} λ_m (from just after s to just before t) and E_s = Σ_{s<m<=n} λ_m (from just after s
    to the chunk's end). In matrix form, per head, A[t][s] = Σ_i r_t[i] k_s[i] e^{D_ts[i]} (s < t)
    plus the bonus diagonal A[t][t] = Σ_i r_t[i] u[i] k_t[i]; then Y = (r ⊙ e^P) S_0 + A V.

    Every exponent is itself a sum of log-decays over the tokens between s and t, accumulated pair
    by pair (a cumulative sum along t for each s): never a difference A_t - A_s of two prefix
    sums, and never split as e^{A_t} e^{-A_s}. RWKV-6's λ is unbounded below, so e^{-A_s}
    overflows within a few tokens, and a difference of two large prefix sums cancels the small
    λ's between them. Sums of same-sign terms lose no digits: each exponent is within n eps of
    its exact value, relative. Cost per chunk and head: O(n^2 N) for the pairwise weights plus
    O(n N^2) for the products with S_0: a prompt becomes matrix products instead of T steps.
    """
    (r, w_log, k, v, u), S = _inputs(r, w_log, k, v, u, state)
    B, T, H, N = r.shape
    y = np.empty_like(r)
    for start in range(0, T, chunk):
        # This chunk's tokens, heads first: (B, H, n, N).
        rc, lc, kc, vc = (x[:, start:start + chunk].transpose(0, 2, 1, 3) for x in (r, w_log, k, v))
        n = rc.shape[2]
        t, s = np.arange(n)[:, None], np.arange(n)[None, :]
        zero = np.zeros_like(lc[:, :, :1])
        prev = np.concatenate([zero, lc[:, :, :-1]], axis=2)   # λ_{t-1} (0 for the first token)
        nxt = np.concatenate([lc[:, :, 1:], zero], axis=2)     # λ_{s+1} (0 for the last token)
        P = np.cumsum(prev, axis=2)                            # P_t = Σ_{m<t} λ_m, (B, H, n, N)
        # D[t][s] = Σ_{s<m<t} λ_m: for each s a cumulative sum along t of λ_{t-1}, taken where t-1 > s.
        D = np.cumsum(np.where((t - 1 > s)[..., None], prev[:, :, :, None, :], 0.0), axis=2)  # (B, H, n, n, N)
        decay = np.exp(np.where((s < t)[..., None], D, -np.inf))                  # 0 where s >= t
        A = np.einsum("bhti,bhsi,bhtsi->bhts", rc, kc, decay)                     # strictly lower
        A += np.einsum("bhti,hi,bhti->bht", rc, u, kc)[..., None] * (t == s)      # bonus diagonal
        Y = np.einsum("bhti,bhij->bhtj", rc * np.exp(P), S) + A @ vc
        y[:, start:start + n] = Y.transpose(0, 2, 1, 3)
        E = np.flip(np.cumsum(np.flip(nxt, axis=2), axis=2), axis=2)   # E_s = Σ_{s<m<=n} λ_m
        S = (np.exp(P[:, :, -1] + lc[:, :, -1])[..., None] * S          # e^{Σ of the chunk} S_0
             + np.einsum("bhsi,bhsj->bhij", kc * np.exp(E), vc))
    return y, S
