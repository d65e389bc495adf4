"""The whole RWKV-4 forward pass in float64 NumPy, top to bottom: the file to read first.

It computes exactly what Hugging Face transformers' RwkvForCausalLM computes in eval mode, with
HF's names for every weight (`params` is the state dict, e.g. from `rwkv_np.load.load`), one
token position per row and no tricks: no kernels, no caching of transformed weights. Each block
function takes the weights it reads as keyword arguments, named as in the checkpoint. The fast
engine (model.py) is tested against it; golden outputs for other engines come from it.

Shapes: B batch, T tokens, H hidden_size, A attention_hidden_size, I intermediate_size,
L layers, V vocab. The recurrent state is HF's list of five (B, H, L) arrays:
[0] ffn_x, [1] att_x (the last token's LayerNorm outputs, for token shift), [2] num a,
[3] den b, [4] max p (the WKV state in log-space, see wkv.py).
"""
from __future__ import annotations

import numpy as np

from ..nn import layer_norm, sigmoid
from .config import RwkvConfig
from .state import ATT_X, DEN, FFN_X, MAX, NUM, empty_state
from .wkv import wkv_reference


def token_shift(x, last):  # x (B, T, H), last (B, H) -> (B, T, H)
    """Each position sees the previous position's input: out[:, t] = x[:, t-1], out[:, 0] = last."""
    return np.concatenate([last[:, None, :], x[:, :-1]], axis=1)


def mix(x, shifted, m):  # x, shifted (B, T, H), m (1, 1, H) -> (B, T, H)
    """Token shift's blend of this token and the previous one: x*m + shifted*(1-m)."""
    return x * m[0, 0] + shifted * (1 - m[0, 0])


def attention(x, last_x, wkv_state, *, time_decay, time_first, time_mix_key, time_mix_value,
              time_mix_receptance, key, value, receptance, output):  # x (B, T, H) -> (B, T, H)
    """Time mixing: r, k, v from a mix of this and the previous token, WKV over time, output gate.

        xk = x*mix_k + shift(x)*(1-mix_k)   (same for v, r)
        k = xk @ Wk.T   v = xv @ Wv.T   r = sigmoid(xr @ Wr.T)
        out = (r * WKV(w=-exp(time_decay), u=time_first, k, v)) @ Wo.T

    last_x (B, H) is the previous token's x; wkv_state (a, b, p) each (B, A). Returns the
    output, x's last row (the next call's last_x) and the new WKV state."""
    shifted = token_shift(x, last_x)
    k = mix(x, shifted, time_mix_key) @ key.T                          # (B, T, A)
    v = mix(x, shifted, time_mix_value) @ value.T                      # (B, T, A)
    r = sigmoid(mix(x, shifted, time_mix_receptance) @ receptance.T)   # (B, T, A)
    w = -np.exp(time_decay)                                            # (A,) decay per step, < 0
    wkv, wkv_state = wkv_reference(w, time_first, k, v, wkv_state)
    return (r * wkv) @ output.T, x[:, -1], wkv_state


def feed_forward(x, last_x, *, time_mix_key, time_mix_receptance, key, receptance, value):
    """Channel mixing: a squared-ReLU MLP gated by a sigmoid, on token-shifted inputs.
    x (B, T, H) -> (B, T, H), and x's last row (the next call's last_x).

        out = sigmoid(xr @ Wr.T) * (relu(xk @ Wk.T)**2 @ Wv.T)
    """
    shifted = token_shift(x, last_x)
    k = np.maximum(mix(x, shifted, time_mix_key) @ key.T, 0) ** 2             # (B, T, I)
    r = sigmoid(mix(x, shifted, time_mix_receptance) @ receptance.T)          # (B, T, H)
    return r * (k @ value.T), x[:, -1]


def weights_of(p: dict, prefix: str) -> dict:
    """The weights under `prefix`, keyed by the rest of their name without `.weight`:
    "rwkv.blocks.0.attention.key.weight" -> "key" for prefix "rwkv.blocks.0.attention.".
    (Only the matrices have a `.weight` suffix in a branch; no two names collide.)"""
    return {n[len(prefix):].removesuffix(".weight"): x for n, x in p.items() if n.startswith(prefix)}


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

    x = p["rwkv.embeddings.weight"][ids]                                # (B, T, H)
    x = layer_norm(x, p["rwkv.blocks.0.pre_ln.weight"], p["rwkv.blocks.0.pre_ln.bias"], eps)
    hidden, att_out, ffn_out = [], [], []
    for i in range(config.num_hidden_layers):
        blk = f"rwkv.blocks.{i}."
        scale = 2.0 ** -(i // every) if every > 0 else 1.0
        wkv_state = (state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i])
        xa = layer_norm(x, p[blk + "ln1.weight"], p[blk + "ln1.bias"], eps)
        a, state[ATT_X][:, :, i], wkv_state = attention(xa, state[ATT_X][:, :, i], wkv_state,
                                                         **weights_of(p, blk + "attention."))
        state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i] = wkv_state
        x = x + a * scale
        xf = layer_norm(x, p[blk + "ln2.weight"], p[blk + "ln2.bias"], eps)
        f, state[FFN_X][:, :, i] = feed_forward(xf, state[FFN_X][:, :, i], **weights_of(p, blk + "feed_forward."))
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
