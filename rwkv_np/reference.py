"""The whole RWKV-4 forward pass in float64 NumPy, top to bottom: the file to read first.

It computes exactly what Hugging Face transformers' RwkvForCausalLM computes in eval mode, with
HF's names for every weight (`params` is the state dict, e.g. from `weights.load_state_dict`),
one token position per row and no tricks: no kernels, no caching of transformed weights.
The fast engine (model.py) is tested against it; golden outputs for other engines come from it.

Shapes: B batch, T tokens, H hidden_size, A attention_hidden_size, I intermediate_size,
L layers, V vocab. The recurrent state is HF's list of five (B, H, L) arrays:
[0] ffn_x, [1] att_x (the last token's LayerNorm outputs, for token shift), [2] num a,
[3] den b, [4] max p (the WKV state in log-space, see wkv.py).
"""
from __future__ import annotations

import numpy as np

from .config import RwkvConfig
from .state import ATT_X, DEN, FFN_X, MAX, NUM, empty_state
from .wkv import wkv_reference


def layer_norm(x, weight, bias, eps):  # x (..., H) -> (..., H)
    """(x - mean) / sqrt(var + eps) * weight + bias, variance without Bessel's correction."""
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def token_shift(x, last):  # x (B, T, H), last (B, H) -> (B, T, H)
    """Each position sees the previous position's input: out[:, t] = x[:, t-1], out[:, 0] = last."""
    return np.concatenate([last[:, None, :], x[:, :-1]], axis=1)


def attention(p, i, x, state, config):  # x (B, T, H) -> (B, T, H); updates state layer i
    """Time mixing: r, k, v from a mix of this and the previous token, WKV over time, output gate.

        xk = x*mix_k + shift(x)*(1-mix_k)   (same for v, r)
        k = xk @ Wk.T   v = xv @ Wv.T   r = sigmoid(xr @ Wr.T)
        out = (r * WKV(w=-exp(time_decay), u=time_first, k, v)) @ Wo.T
    """
    g = lambda name: p[f"rwkv.blocks.{i}.attention.{name}"]
    shifted = token_shift(x, state[ATT_X][:, :, i])
    mix = lambda m: x * g(m)[0, 0] + shifted * (1 - g(m)[0, 0])
    k = mix("time_mix_key") @ g("key.weight").T                       # (B, T, A)
    v = mix("time_mix_value") @ g("value.weight").T                   # (B, T, A)
    r = sigmoid(mix("time_mix_receptance") @ g("receptance.weight").T)  # (B, T, A)
    w = -np.exp(g("time_decay"))                                      # (A,) decay per step, < 0
    wkv, (a, b, pmax) = wkv_reference(
        w, g("time_first"), k, v, (state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i]))
    state[ATT_X][:, :, i] = x[:, -1]
    state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i] = a, b, pmax
    return (r * wkv) @ g("output.weight").T


def feed_forward(p, i, x, state):  # x (B, T, H) -> (B, T, H); updates state layer i
    """Channel mixing: a squared-ReLU MLP gated by a sigmoid, on token-shifted inputs.

        out = sigmoid(xr @ Wr.T) * (relu(xk @ Wk.T)**2 @ Wv.T)
    """
    g = lambda name: p[f"rwkv.blocks.{i}.feed_forward.{name}"]
    shifted = token_shift(x, state[FFN_X][:, :, i])
    mix = lambda m: x * g(m)[0, 0] + shifted * (1 - g(m)[0, 0])
    key = np.maximum(mix("time_mix_key") @ g("key.weight").T, 0) ** 2            # (B, T, I)
    receptance = sigmoid(mix("time_mix_receptance") @ g("receptance.weight").T)  # (B, T, H)
    state[FFN_X][:, :, i] = x[:, -1]
    return receptance * (key @ g("value.weight").T)


def forward(params, config: RwkvConfig, input_ids, state=None):  # input_ids (B, T)
    """Logits (B, T, V), the new state, and per block: its output x (after rescaling, as HF's
    hidden_states), its attention-branch and feed-forward-branch outputs.

    Per block i, with x the residual stream:
        x = x + attention(ln1(x))
        x = x + feed_forward(ln2(x))
        x = x / 2  if rescale_every > 0 and (i+1) % rescale_every == 0
    HF (in eval mode) also divides block i's attention.output and feed_forward.value weights by
    2**(i // rescale_every), so the residual stream stays in float16 range; both branches of
    block i are scaled by that factor, which keeps them consistent with the halved x.
    """
    ids = np.atleast_2d(np.asarray(input_ids))
    B, T = ids.shape
    state = empty_state(config, B, np.float64) if state is None else [np.array(s, np.float64) for s in state]
    eps, every = config.layer_norm_epsilon, config.rescale_every
    p = {name: np.asarray(x, np.float64) for name, x in params.items()}
    blk = lambda i, name: p[f"rwkv.blocks.{i}.{name}"]

    x = p["rwkv.embeddings.weight"][ids]                                # (B, T, H)
    x = layer_norm(x, blk(0, "pre_ln.weight"), blk(0, "pre_ln.bias"), eps)
    hidden, att_out, ffn_out = [], [], []
    for i in range(config.num_hidden_layers):
        scale = 2.0 ** -(i // every) if every > 0 else 1.0
        a = attention(p, i, layer_norm(x, blk(i, "ln1.weight"), blk(i, "ln1.bias"), eps), state, config)
        x = x + a * scale
        f = feed_forward(p, i, layer_norm(x, blk(i, "ln2.weight"), blk(i, "ln2.bias"), eps), state)
        x = x + f * scale
        if every > 0 and (i + 1) % every == 0:
            x = x / 2
        hidden.append(x)
        att_out.append(a * scale)
        ffn_out.append(f * scale)
    x = layer_norm(x, p["rwkv.ln_out.weight"], p["rwkv.ln_out.bias"], 1e-5)  # HF: always 1e-5
    logits = x @ p["head.weight"].T                                     # (B, T, V)
    return {"logits": logits, "state": state, "hidden_states": hidden + [x],
            "attentions": att_out, "feed_forward": ffn_out}
