"""The whole RWKV-6 ("Finch") forward pass in float64 NumPy, top to bottom: the file to read first.

Plain functions over arrays, the state passed in and returned, no kernels, no Numba: this file
imports NumPy and its NumPy-only siblings. Each block's weights reach its function as keyword
arguments named as in the checkpoint (the HF rwkv6 layout, names.py), so a signature shows what
the block reads: `time_mix(x, ..., **params["rwkv"]["blocks"]["3"]["attention"])`.

Shapes: B batch, T tokens, C hidden_size, H heads, N head_size (C = H N), L layers, V vocab,
D_mix / D_decay the LoRA ranks. State: RWKV-5's (rwkv_np.v5.state), S[i][j] = [key][value].

RWKV-6 is RWKV-5.2 with two things made data-dependent, per token:
  - the token shift: each of r, k, v, g and the decay input mixes x with the previous token by an
    amount that a small LoRA computes from the token ("ddlerp"), not by a fixed time_mix;
  - the decay: λ_t = -exp(time_decay + LoRA(x_t)), one per token and channel. It is unbounded
    below (a large LoRA output gives λ = -1e30, or -inf in float32), so it is clamped
    (rwkv_np.v5.wkv.LOG_DECAY_FLOOR: e^{-1000} = 0, no decay changes).
The WKV recurrence, the output gate silu(g), the ln_x group norm and the channel mix's gated
squared-ReLU are RWKV-5.2's. Sources: BlinkDL's RWKV-LM `RWKV_Tmix_x060`, ChatRWKV / the `rwkv`
package `att_one_v6_0`, `ffn_one_v6`; rwkv.cpp `rwkv_att_v6`, `rwkv_ffn_v6` (the equations; this
is an independent float64 implementation). Checked against rwkv.cpp's tiny Q5_0 model and
BlinkDL's package (tests/test_v6_reference.py, tests/test_v56_blinkdl.py).
"""
from __future__ import annotations

import numpy as np

from ..nn import group_norm, layer_norm, nest, sigmoid, token_shift
from ..v5.state import ATT_X, FFN_X, WKV, empty_state
from ..v5.wkv import clamp_log_decay, wkv5_sequential
from .config import Rwkv6Config


def linear(x, weight):  # x (..., in), weight (out, in) -> (..., out): the projections
    return x @ weight.T


def lora(x, weight):  # x (..., in), weight (in, out) -> (..., out): LoRA matrices, BlinkDL's orientation
    return x @ weight


def silu(x):
    return x * sigmoid(x)


def ddlerp(x, dx, *, time_maa_x, time_maa_w1, time_maa_w2, **mixes):
    # x (B, T, C), dx = x_{t-1} - x (B, T, C) -> {"w", "k", "v", "r", "g": (B, T, C)}
    """Data-dependent token shift. One LoRA of rank 5 D_mix on a fixed blend gives five offsets:

        m = tanh((x + dx ⊙ maa_x) W1)              (B, T, 5 D_mix) -> 5 rows of D_mix: w, k, v, r, g
        x_q = x + dx ⊙ (maa_q + m_q W2[q])         for q in w, k, v, r, g

    (RWKV-5's x mix + x_{t-1} (1 - mix) is this with maa = 1 - mix and no LoRA.)"""
    B, T, C = x.shape
    m = np.tanh(lora(x + dx * time_maa_x, time_maa_w1)).reshape(B, T, 5, -1)   # (B, T, 5, D_mix)
    offsets = np.einsum("btqd,qdc->qbtc", m, time_maa_w2)                        # (5, B, T, C)
    return {q: x + dx * (mixes[f"time_maa_{q}"] + offsets[j]) for j, q in enumerate("wkvrg")}


def log_decay(xw, *, time_decay, time_decay_w1, time_decay_w2):  # xw (B, T, C) -> λ (B, T, C)
    """λ_t = -exp(time_decay + tanh(xw W1) W2), the log of the decay w_t = exp(-exp(.)), clamped."""
    ww = time_decay + lora(np.tanh(lora(xw, time_decay_w1)), time_decay_w2)
    with np.errstate(over="ignore"):                                            # exp(ww > 709) = inf
        return clamp_log_decay(-np.exp(ww))


def time_mix(x, last_x, wkv, *, eps, time_maa_x, time_maa_w, time_maa_k, time_maa_v, time_maa_r, time_maa_g,
             time_maa_w1, time_maa_w2, time_decay, time_decay_w1, time_decay_w2, time_faaaa,
             receptance, key, value, gate, output, ln_x):
    # x (B, T, C) the ln1 output, last_x (B, C), wkv (B, H, N, N)
    # -> out (B, T, C), new last_x (B, C), new wkv (B, H, N, N)
    """RWKV-6 time mixing: ddlerp, the projections, a decay per token, WKV-5, ln_x, the gate."""
    B, T, C = x.shape
    H, N = time_faaaa.shape
    dx = token_shift(x, last_x) - x                                             # x_{t-1} - x_t
    xs = ddlerp(x, dx, time_maa_x=time_maa_x, time_maa_w1=time_maa_w1, time_maa_w2=time_maa_w2,
                time_maa_w=time_maa_w, time_maa_k=time_maa_k, time_maa_v=time_maa_v, time_maa_r=time_maa_r,
                time_maa_g=time_maa_g)
    r = linear(xs["r"], **receptance)                                           # no sigmoid
    k = linear(xs["k"], **key)
    v = linear(xs["v"], **value)
    g = silu(linear(xs["g"], **gate))
    w_log = log_decay(xs["w"], time_decay=time_decay, time_decay_w1=time_decay_w1, time_decay_w2=time_decay_w2)

    # WKV per head, with this token's decay: y_t = r_t^T (S + diag(u) k_t v_t^T), S <- diag(w_t) S + k_t v_t^T.
    heads = lambda z: z.reshape(B, T, H, N)  # noqa: E731
    y, wkv = wkv5_sequential(heads(r), heads(w_log), heads(k), heads(v), time_faaaa, wkv)
    y = group_norm(y.reshape(B, T, C), **ln_x, heads=H, eps=eps) * g
    return linear(y, **output), x[:, -1], wkv


def channel_mix(x, last_x, *, time_maa_k, time_maa_r, key, receptance, value):
    # x (B, T, C) the ln2 output, last_x (B, C) -> out (B, T, C), new last_x (B, C)
    """out = sigmoid(Wr xr) ⊙ (Wv relu(Wk xk)^2), xq = x + (x_{t-1} - x) ⊙ maa_q (fixed mixes)."""
    dx = token_shift(x, last_x) - x
    k = np.maximum(linear(x + dx * time_maa_k, **key), 0) ** 2                 # (B, T, F)
    return sigmoid(linear(x + dx * time_maa_r, **receptance)) * linear(k, **value), x[:, -1]


def forward(params, config: Rwkv6Config, input_ids, state=None):  # input_ids (B, T) ints
    """Logits (B, T, V), the new state, each block's output x then the final normed x (L+1 of
    hidden_states), and each block's time-mix (attentions) and channel-mix (feed_forward) branch.

    `params`: the HF-named tensors (names.py); with config.tie_word_embeddings the embeddings
    are the head and head.weight is not read. `state`: [att_x, ffn_x, wkv] as rwkv_np.v5.state, or
    None for all zeros; not modified.
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
