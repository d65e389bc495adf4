"""The whole RWKV-7 ("Goose") forward pass in float64 NumPy, top to bottom: the file to read first.

Plain functions over arrays, the state passed in and returned, no kernels, no Numba: this file
imports NumPy and its NumPy-only siblings. Each block's weights reach its function as keyword
arguments named as in the checkpoint (fla's HF layout, names.py), so a signature shows what the
block reads: `time_mix(x, ..., **params["model"]["layers"]["3"]["attn"])`.

Shapes: B batch, T tokens, C hidden_size, H heads, N head_dim (C = H N), L layers, V vocab.
State (state.py): [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)], S[i][j] = [value][key].

Per layer, with x the residual stream (the skeleton of RWKV-5/6/7):
    x = x + time_mix(attn_norm(x))          # "attention": the WKV-7 recurrence across tokens
    x = x + channel_mix(ffn_norm(x))        # "feed-forward": a squared-ReLU MLP on token-shifted input
Sources: BlinkDL's RWKV-LM `RWKV_Tmix_x070` / `rwkv_v7_numpy.py`, ChatRWKV `RWKV_x070`, rwkv.cpp
`rwkv_att_v7` (the equations; this is an independent float64 implementation). Checked against
rwkv.cpp's expected logits for its tiny RWKV-7 model (tests/test_v7_reference.py).
"""
from __future__ import annotations

import numpy as np

from ..nn import group_norm, layer_norm, nest, sigmoid, token_shift
from .config import Rwkv7Config
from .state import ATT_X, FFN_X, WKV, empty_state
from .wkv import wkv7_sequential

DECAY_SCALE = np.exp(-0.5)  # e^{-1/2}: log-decays lie in (-e^{-1/2}, 0), decays w in (0.545, 1)


def l2_normalize(x):  # x (..., N) -> (..., N)
    """x / max(||x||, 1e-12), as torch's F.normalize and rwkv.cpp's l2norm."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def linear(x, weight):  # x (..., in), weight (out, in) -> (..., out)
    return x @ weight.T


def low_rank(x, lora, activation=None):  # x (B, T, C) -> (B, T, C)
    """fla's LoRA module: lora.2(activation(lora.0(x))) = act(x A^T) B^T (+ bias), A (D, C), B (C, D)."""
    h = linear(x, lora["0"]["weight"])
    if activation is not None:
        h = activation(h)
    return linear(h, lora["2"]["weight"]) + lora["2"].get("bias", 0.0)


def time_mix(x, last_x, wkv, v_first, *, eps, x_r, x_w, x_k, x_v, x_a, x_g, r_proj, k_proj, v_proj,
             o_proj, w_lora, a_lora, g_lora, k_k, k_a, r_k, g_norm, v_lora=None):
    # x (B, T, C) the attn_norm output, last_x (B, C), wkv (B, H, N, N), v_first (B, T, C) or None
    # -> out (B, T, C), new last_x (B, C), new wkv (B, H, N, N), v_first (B, T, C)
    """RWKV-7 time mixing. Layer 0 has no v_lora: its values become v_first, which every later
    layer mixes into its own values ("value residual")."""
    B, T, C = x.shape
    H, N = r_k.shape
    dx = token_shift(x, last_x) - x
    xr, xw, xk, xv, xa, xg = (x + dx * m for m in (x_r, x_w, x_k, x_v, x_a, x_g))  # x + (x_{t-1} - x) ⊙ mix

    r = linear(xr, **r_proj)                                   # receptance (no sigmoid, unlike RWKV-4)
    k = linear(xk, **k_proj)
    v = linear(xv, **v_proj)
    # Decay w = exp(-e^{-1/2} sigmoid(z)), z = w0 + tanh(xw W1) W2, kept as its log λ in (-0.607, 0).
    w_log = -DECAY_SCALE * sigmoid(low_rank(xw, **w_lora, activation=np.tanh))
    iclr = sigmoid(low_rank(xa, **a_lora))                     # in-context learning rate, in (0, 1)
    g = low_rank(xg, **g_lora, activation=sigmoid)             # output gate: sigmoid(xg G1) G2, no silu
    kk = l2_normalize((k * k_k).reshape(B, T, H, N))           # removal key, unit length per head
    k = k * (1 + (iclr - 1) * k_a)                             # k scaled by iclr, by an amount k_a
    if v_lora is None:
        v_first = v                                            # layer 0: remember this token's v
    else:
        v = v + (v_first - v) * sigmoid(low_rank(xv, **v_lora))  # lerp towards layer 0's v

    # WKV-7 per head: S_t = S_{t-1} (diag(w_t) + a_t b_t^T) + v_t k_t^T,  y_t = S_t r_t,
    # with a = -kk, b = kk ⊙ iclr: forget the fraction iclr of what S holds along kk, then write v k^T.
    heads = lambda z: z.reshape(B, T, H, N)  # noqa: E731
    y, wkv = wkv7_sequential(heads(r), heads(w_log), heads(k), heads(v), -kk, kk * heads(iclr), wkv)
    y = group_norm(y.reshape(B, T, C), **g_norm, heads=H, eps=eps)
    # Bonus: each head adds its current value, weighted by Σ_j r_j k_j r_k[j] (RWKV-5/6's u, reshaped).
    y = y + ((heads(r) * heads(k) * r_k).sum(-1, keepdims=True) * heads(v)).reshape(B, T, C)
    return linear(y * g, **o_proj), x[:, -1], wkv, v_first


def channel_mix(x, last_x, *, x_k, key, value):  # x (B, T, C) the ffn_norm output, last_x (B, C)
    # -> out (B, T, C), new last_x (B, C)
    """out = relu(xk Wk^T)^2 Wv^T with xk = x + (x_{t-1} - x) ⊙ x_k (no receptance gate in RWKV-7)."""
    xk = x + (token_shift(x, last_x) - x) * x_k
    return linear(np.maximum(linear(xk, **key), 0) ** 2, **value), x[:, -1]


def forward(params, config: Rwkv7Config, input_ids, state=None):  # input_ids (B, T) ints
    """Logits (B, T, V), the new state, each block's output x then the final normed x (L+1 of
    hidden_states), and each block's time-mix (attentions) and channel-mix (feed_forward) branch.

    `params`: the HF-named tensors (names.py); with config.tie_word_embeddings the embeddings
    are the head and lm_head.weight is not read. `state`: [att_x, ffn_x, wkv] as state.py, or
    None for all zeros; not modified.
    """
    ids = np.atleast_2d(np.asarray(input_ids))
    B, T = ids.shape
    state = empty_state(config, B, np.float64) if state is None else [np.array(s, np.float64) for s in state]
    eps = config.norm_eps
    model = nest(params)
    layers = model["model"]["layers"]
    head = model["model"]["embeddings"] if config.tie_word_embeddings else model["lm_head"]

    x = model["model"]["embeddings"]["weight"][ids]                        # (B, T, C)
    x = layer_norm(x, **layers["0"]["pre_norm"], eps=eps)
    v_first = None
    hidden, attentions, ffns = [], [], []
    for i in range(config.num_hidden_layers):
        layer = layers[str(i)]
        att, state[ATT_X][:, i], state[WKV][:, i], v_first = time_mix(
            layer_norm(x, **layer["attn_norm"], eps=eps), state[ATT_X][:, i], state[WKV][:, i], v_first,
            eps=config.group_norm_eps, **layer["attn"])
        x = x + att
        ffn, state[FFN_X][:, i] = channel_mix(layer_norm(x, **layer["ffn_norm"], eps=eps), state[FFN_X][:, i],
                                              **layer["ffn"])
        x = x + ffn
        hidden.append(x)
        attentions.append(att)
        ffns.append(ffn)
    x = layer_norm(x, **model["model"]["norm"], eps=eps)
    logits = linear(x, **head)                                             # (B, T, V)
    return {"logits": logits, "state": state, "hidden_states": hidden + [x],
            "attentions": attentions, "feed_forward": ffns}
