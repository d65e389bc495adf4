"""The whole RWKV-5 ("Eagle") forward pass in float64 NumPy, top to bottom: the file to read first.

Plain functions over arrays, the state passed in and returned, no kernels, no Numba: this file
imports NumPy and its NumPy-only siblings. Each block's weights reach its function as keyword
arguments named as in the checkpoint (the HF rwkv5 layout, names.py), so a signature shows what
the block reads: `time_mix(x, ..., **params["rwkv"]["blocks"]["3"]["attention"])`.

Shapes: B batch, T tokens, C hidden_size, H heads, N head_size (C = H N), L layers, V vocab.
State (state.py): [att_x (B, L, C), ffn_x (B, L, C), wkv (B, L, H, N, N)], S[i][j] = [key][value].

Per layer, with x the residual stream (the skeleton of RWKV-5/6/7):
    x = x + time_mix(ln1(x))          # "attention": the WKV-5 recurrence across tokens
    x = x + channel_mix(ln2(x))       # "feed-forward": a gated squared-ReLU MLP, as RWKV-4's
Sources: BlinkDL's RWKV-LM `RWKV_Tmix_x052`, ChatRWKV / the `rwkv` package `att_one_v5`,
`att_one_v5_1`, `ffn_one`; rwkv.cpp `rwkv_att_v5`, `rwkv_ffn_v4_v5` (the equations; this is an
independent float64 implementation). Checked against rwkv.cpp's expected logits for its tiny
5.0 and 5.2 models and against BlinkDL's package (tests/test_v5_reference.py).
"""
from __future__ import annotations

import numpy as np

from ..nn import group_norm, layer_norm, nest, sigmoid, token_shift
from .config import Rwkv5Config
from .state import ATT_X, FFN_X, WKV, empty_state
from .wkv import clamp_log_decay, wkv5_sequential


def linear(x, weight):  # x (..., in), weight (out, in) -> (..., out)
    return x @ weight.T


def silu(x):
    return x * sigmoid(x)


def lerp(x, shifted, mix):  # x, shifted (B, T, C), mix (1, 1, C) -> (B, T, C)
    """Token shift's blend of this token and the previous one: x mix + x_{t-1} (1 - mix)."""
    return x * mix + shifted * (1 - mix)


def decay_and_bonus(time_decay, heads, head_size, time_faaaa=None, time_first=None):
    # time_decay (H, N) or (H,) -> log-decays λ (H, N), bonus u (H, N)
    """RWKV-5.2 has a decay and a bonus per channel; 5.0 / 5.1 one per head, shared by its N channels:

        λ = -exp(time_decay)          (w = e^λ = exp(-exp(time_decay)) in (0, 1))
        u = time_faaaa                (5.2: used raw)
        u = exp(time_first)           (5.0 / 5.1: exponentiated)
    """
    shape = (heads, head_size)
    w_log = clamp_log_decay(np.broadcast_to((-np.exp(time_decay)).reshape(heads, -1), shape))
    u = time_faaaa if time_faaaa is not None else np.exp(time_first)
    return w_log, np.broadcast_to(u.reshape(heads, -1), shape)


def time_mix(x, last_x, wkv, *, eps, time_mix_key, time_mix_value, time_mix_receptance, time_decay,
             key, value, receptance, output, ln_x, time_mix_gate=None, gate=None, time_faaaa=None,
             time_first=None):
    # x (B, T, C) the ln1 output, last_x (B, C), wkv (B, H, N, N)
    # -> out (B, T, C), new last_x (B, C), new wkv (B, H, N, N)
    """RWKV-5 time mixing. 5.1 / 5.2 gate the output with silu(gate(xg)); 5.0 has no gate."""
    B, T, C = x.shape
    H = time_decay.shape[0]
    N = C // H
    shifted = token_shift(x, last_x)
    r = linear(lerp(x, shifted, time_mix_receptance), **receptance)   # receptance (no sigmoid, unlike RWKV-4)
    k = linear(lerp(x, shifted, time_mix_key), **key)
    v = linear(lerp(x, shifted, time_mix_value), **value)
    w_log, u = decay_and_bonus(time_decay, H, N, time_faaaa, time_first)

    # WKV-5 per head: y_t = r_t^T (S_{t-1} + diag(u) k_t v_t^T),  S_t = diag(w) S_{t-1} + k_t v_t^T.
    heads = lambda z: z.reshape(B, T, H, N)  # noqa: E731
    y, wkv = wkv5_sequential(heads(r), np.broadcast_to(w_log, (B, T, H, N)), heads(k), heads(v), u, wkv)
    y = group_norm(y.reshape(B, T, C), **ln_x, heads=H, eps=eps)      # per head, eps: config.py
    if gate is not None:
        y = y * silu(linear(lerp(x, shifted, time_mix_gate), **gate))  # 5.1 / 5.2: y ⊙ silu(Wg xg)
    return linear(y, **output), x[:, -1], wkv


def channel_mix(x, last_x, *, time_mix_key, time_mix_receptance, key, receptance, value):
    # x (B, T, C) the ln2 output, last_x (B, C) -> out (B, T, C), new last_x (B, C)
    """out = sigmoid(Wr xr) ⊙ (Wv relu(Wk xk)^2), xk and xr mixed with the previous token."""
    shifted = token_shift(x, last_x)
    k = np.maximum(linear(lerp(x, shifted, time_mix_key), **key), 0) ** 2                # (B, T, F)
    return sigmoid(linear(lerp(x, shifted, time_mix_receptance), **receptance)) * linear(k, **value), x[:, -1]


def forward(params, config: Rwkv5Config, input_ids, state=None):  # input_ids (B, T) ints
    """Logits (B, T, V), the new state, each block's output x then the final normed x (L+1 of
    hidden_states), and each block's time-mix (attentions) and channel-mix (feed_forward) branch.

    `params`: the HF-named tensors (names.py); with config.tie_word_embeddings the embeddings
    are the head and head.weight is not read. `state`: [att_x, ffn_x, wkv] as state.py, or None
    for all zeros; not modified.
    """
    ids = np.atleast_2d(np.asarray(input_ids))
    B = ids.shape[0]
    state = empty_state(config, B, np.float64) if state is None else [np.array(s, np.float64) for s in state]
    eps = config.layer_norm_epsilon
    tree = nest(params)
    model, blocks = tree["rwkv"], tree["rwkv"]["blocks"]
    head = model["embeddings"] if config.tie_word_embeddings else tree["head"]

    x = model["embeddings"]["weight"][ids]                                  # (B, T, C)
    x = layer_norm(x, **blocks["0"]["pre_ln"], eps=eps)
    hidden, attentions, ffns = [], [], []
    for i in range(config.num_hidden_layers):
        block = blocks[str(i)]
        att, state[ATT_X][:, i], state[WKV][:, i] = time_mix(
            layer_norm(x, **block["ln1"], eps=eps), state[ATT_X][:, i], state[WKV][:, i],
            eps=config.group_norm_eps, **block["attention"])
        x = x + att
        ffn, state[FFN_X][:, i] = channel_mix(layer_norm(x, **block["ln2"], eps=eps), state[FFN_X][:, i],
                                              **block["feed_forward"])
        x = x + ffn
        hidden.append(x)
        attentions.append(att)
        ffns.append(ffn)
    x = layer_norm(x, **model["ln_out"], eps=eps)
    logits = linear(x, **head)                                              # (B, T, V)
    return {"logits": logits, "state": state, "hidden_states": hidden + [x],
            "attentions": attentions, "feed_forward": ffns}
