"""WKV: RWKV-4's time-mixing recurrence, the two readable forms (NumPy only; the Numba kernel
the model runs is kernels.py's `wkv_forward`).

Per channel c (all channels are independent), with w = -exp(time_decay) < 0 and u = time_first,
the exact recurrence over a sequence of keys k_t and values v_t is

    wkv_t = (N_{t-1} + e^(u + k_t) v_t) / (D_{t-1} + e^(u + k_t))
    N_t   = e^w N_{t-1} + e^(k_t) v_t
    D_t   = e^w D_{t-1} + e^(k_t)

e^(k_t) overflows float32 for k_t > 88, so every engine keeps the state in log-space instead:
(a, b, p) with N = a e^p and D = b e^p, and scales each update by its largest exponent.

1. `wkv_reference`: float64 plain NumPy, step by step: the readable oracle.
2. `wkv_parallel`:  the parallel ("GPT-mode") form, every output of a chunk at once, chunks
                    chained by state; O(T * chunk) work. Proven equal to (1) by tests.
(3. kernels.wkv_forward: the same steps in Numba, float32 or float64, proven equal to (1).)

State arrays are (B, C); an empty state is a = b = 0, p = -1e38 (HF's CPU kernel uses -1e38;
exp(-1e38 - anything finite) is exactly 0, so the first step sees no history).
"""
from __future__ import annotations

import numpy as np

EMPTY_MAX = -1e38  # p of an empty state: e^p is exactly 0 in float32 and float64


def empty_wkv_state(batch: int, channels: int, dtype=np.float64):
    """(a, b, p), each (B, C): the state before any token."""
    a = np.zeros((batch, channels), dtype)
    b = np.zeros((batch, channels), dtype)
    p = np.full((batch, channels), EMPTY_MAX, dtype)
    return a, b, p


def wkv_reference(w, u, k, v, state=None):
    """Sequential WKV in float64.  w, u: (C,)  k, v: (B, T, C)  state: (a, b, p) each (B, C) or None.

    Returns wkv (B, T, C) and the new state (a, b, p). Each step, in log-space:

        q  = max(p, u + k_t)                      # largest exponent of the output's two terms
        wkv_t = (e^(p-q) a + e^(u+k_t-q) v_t) / (e^(p-q) b + e^(u+k_t-q))
        q' = max(p + w, k_t)                      # largest exponent of the updated state
        a  = e^(p+w-q') a + e^(k_t-q') v_t;  b = e^(p+w-q') b + e^(k_t-q');  p = q'
    """
    w, u, k, v = (np.asarray(x, np.float64) for x in (w, u, k, v))
    B, T, C = k.shape
    a, b, p = empty_wkv_state(B, C) if state is None else (np.array(s, np.float64) for s in state)
    out = np.empty((B, T, C))
    for t in range(T):
        kt, vt = k[:, t], v[:, t]
        q = np.maximum(p, u + kt)
        e1, e2 = np.exp(p - q), np.exp(u + kt - q)
        out[:, t] = (e1 * a + e2 * vt) / (e1 * b + e2)
        q = np.maximum(p + w, kt)
        e1, e2 = np.exp(p + w - q), np.exp(kt - q)
        a, b, p = e1 * a + e2 * vt, e1 * b + e2, q
    return out, (a, b, p)


def wkv_parallel(w, u, k, v, state=None, chunk: int = 64):
    """Parallel form: all outputs of a chunk as one weighted average.  Shapes as `wkv_reference`.

    Unrolling the recurrence, output t of a chunk (0-based) averages the incoming state and the
    values v_i with log-weights
        p0 + t w          on the incoming state (a0, b0)
        (t-1-i) w + k_i   on v_i for i < t
        u + k_t           on v_t
    (none for i > t). Subtracting each row's max before exponentiating keeps every term <= 1.
    The state after a chunk of length T has log-weights p0 + T w and (T-1-i) w + k_i, so its
    p_T = max of those: the same p the recurrence produces.
    """
    w, u, k, v = (np.asarray(x, np.float64) for x in (w, u, k, v))
    B, T, C = k.shape
    a, b, p = empty_wkv_state(B, C) if state is None else (np.array(s, np.float64) for s in state)
    out = np.empty((B, T, C))
    for start in range(0, T, chunk):
        kc, vc = k[:, start:start + chunk], v[:, start:start + chunk]  # (B, n, C)
        n = kc.shape[1]
        t = np.arange(n)
        lag = (t[:, None] - 1 - t[None, :]).astype(np.float64)        # (n, n): t-1-i
        # logw[b, t, i, c]: weight of v_i in output t; -inf above the diagonal (future tokens).
        logw = np.where((t[:, None] > t[None, :])[None, :, :, None],
                        lag[None, :, :, None] * w + kc[:, None, :, :], -np.inf)
        diag = u + kc                                                    # (B, n, C)
        logw[:, t, t, :] = diag
        logs = p[:, None, :] + t[None, :, None] * w                     # (B, n, C): weight of the state
        m = np.maximum(logw.max(axis=2), logs)                          # (B, n, C): row max
        e = np.exp(logw - m[:, :, None, :])                             # (B, n, n, C)
        es = np.exp(logs - m)
        num = es * a[:, None, :] + np.einsum("btic,bic->btc", e, vc)
        den = es * b[:, None, :] + e.sum(axis=2)
        out[:, start:start + n] = num / den
        # State after the chunk.
        lw = (n - 1 - t)[None, :, None] * w + kc                         # (B, n, C)
        ls = p + n * w                                                   # (B, C)
        q = np.maximum(lw.max(axis=1), ls)
        e, es = np.exp(lw - q[:, None, :]), np.exp(ls - q)
        a = es * a + (e * vc).sum(axis=1)
        b = es * b + e.sum(axis=1)
        p = q
    return out, (a, b, p)
