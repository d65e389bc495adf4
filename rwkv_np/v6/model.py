"""Rwkv6ForCausalLM (and its trunk, Rwkv6Model): the fast RWKV-6 engine, float32 (default) or
float64, HF-style calls on NumPy.

The same numbers as reference.py (read that first: this file computes its equations), with three
differences of method, none of meaning: the projections of all B x T tokens run as one matrix
product each through `rwkv_np.linear` (any weight storage: float32/64, float16, bfloat16, int8),
the LoRA matrices (small, kept in the model's dtype) as NumPy matrix products, and the WKV
recurrence in RWKV-5's Numba kernel (v5/kernels.py) with this layer's decay per token.
Single-token float32 steps of up to 16 rows run each layer as one compiled call (decode.py).
Load-time work (stacking the mixes, contiguous LoRA matrices, choosing each matrix's storage)
happens once, in `Layer.from_tensors`.

The trunk, head, state and call signature are RWKV-5's (v5/model.py); only the layer differs.

    model = Rwkv6ForCausalLM.from_pretrained("path/to/model")   # HF directory, .pth, rwkv.cpp .bin
    out = model(input_ids)                        # out.logits (B, T, V), out.state
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..linear import linear, linear_many
from ..storage import as_float
from ..v5.model import Rwkv5ForCausalLM, Rwkv5Model, channel_mix
from ..v5.prompt import ddlerp, wkv_norm_gate
from ..v5.state import ATT_X, WKV
from ..v7.kernels import norm_and_mix_rows
from .config import Rwkv6Config
from .decode import token_layer
from .names import HEAD, MIXES


@dataclass
class Layer:
    """One RWKV-6 layer's weights, ready to run. Projections are (out, in) in the chosen storage;
    LoRA matrices (out, in) too, float in the model's dtype, C-contiguous: BlinkDL's (in, out)
    transposed once here, so that token mode multiplies them as it does every matrix
    (linear.project; rwkv.cpp's files hold them this way already: no copy)."""
    ln1: tuple; ln2: tuple                    # (weight, bias), each (C,)
    maa_x: np.ndarray                         # (C,) the blend the ddlerp LoRA reads
    maa: np.ndarray                           # (5, C) time_maa_w, _k, _v, _r, _g
    maa_w1: np.ndarray                        # (5 D_mix, C): time_maa_w1 transposed
    maa_w2: np.ndarray                        # (5, C, D_mix): time_maa_w2, each of the 5 transposed
    time_decay: np.ndarray                    # (C,)
    decay_w1: np.ndarray; decay_w2: np.ndarray  # (D_decay, C), (C, D_decay): transposed
    u: np.ndarray                             # (H, N) time_faaaa, the bonus
    receptance: object; key: object; value: object; gate: object; output: object   # (C, C)
    ln_x: tuple                               # (weight, bias), each (C,)
    ffn_maa: np.ndarray                       # (2, C): feed_forward time_maa_k, time_maa_r
    ffn_key: object; ffn_receptance: object; ffn_value: object        # (F, C), (C, C), (C, F)

    @classmethod
    def from_tensors(cls, p: dict, i: int, dtype, store, config) -> Layer:
        pre = f"rwkv.blocks.{i}."
        vec = lambda name: as_float(p[pre + name], dtype)
        flat = lambda name: vec(name).reshape(-1)
        pair = lambda name: (vec(name + ".weight"), vec(name + ".bias"))
        dense = lambda name: np.ascontiguousarray(vec(name))
        out_in = lambda name: np.ascontiguousarray(np.swapaxes(vec(name), -1, -2))
        att = lambda name: store(p[pre + "attention." + name + ".weight"])
        ffn = lambda name: store(p[pre + "feed_forward." + name + ".weight"])
        return cls(ln1=pair("ln1"), ln2=pair("ln2"), maa_x=flat("attention.time_maa_x"),
                   maa=np.stack([flat(f"attention.time_maa_{q}") for q in MIXES]),
                   maa_w1=out_in("attention.time_maa_w1"), maa_w2=out_in("attention.time_maa_w2"),
                   time_decay=flat("attention.time_decay"), decay_w1=out_in("attention.time_decay_w1"),
                   decay_w2=out_in("attention.time_decay_w2"), u=dense("attention.time_faaaa"),
                   receptance=att("receptance"), key=att("key"), value=att("value"), gate=att("gate"),
                   output=att("output"), ln_x=pair("attention.ln_x"),
                   ffn_maa=np.stack([flat("feed_forward.time_maa_k"), flat("feed_forward.time_maa_r")]),
                   ffn_key=ffn("key"), ffn_receptance=ffn("receptance"), ffn_value=ffn("value"))

    def time_mix(self, x, state, i, eps, gn_eps):  # x (B, T, C) the residual stream -> (B, T, C)
        # updates state layer i
        """reference.time_mix of ln1(x) with every product over all B*T rows at once (see its
        equations), the elementwise work compiled (v5/prompt.py): ln1 and the LoRA's blend, the five
        ddlerp blends, then the decays, the WKV, ln_x and the gate in one kernel."""
        B, T, C = x.shape
        last = np.ascontiguousarray(state[ATT_X][:, i])
        xn, (xx,) = norm_and_mix_rows(x, last, *self.ln1, eps, self.maa_x[None])  # xx = x + dx maa_x
        m = np.tanh(linear(xx, self.maa_w1))                   # ddlerp LoRA (B*T, 5 D_mix), columns w k v r g
        D = m.shape[1] // 5
        mixes = linear_many([(m[:, q * D:(q + 1) * D], self.maa_w2[q]) for q in range(5)])  # 5 offsets (B*T, C)
        ddlerp(xn, last, self.maa, tuple(mixes))               # -> x + dx (maa_q + offset_q), in place
        xw, xk, xv, xr, xg = mixes
        r, k, v, g, zw = linear_many([(xr, self.receptance), (xk, self.key), (xv, self.value), (xg, self.gate),
                                      (xw, self.decay_w1)])    # g: silu in the kernel
        ww = linear(np.tanh(zw, out=zw), self.decay_w2)        # decay LoRA
        ww += self.time_decay
        with np.errstate(over="ignore"):
            lam = np.negative(np.exp(ww, out=ww), out=ww)      # λ_t = -e^{ww_t}, floored in the kernel
        y, state[WKV][:, i] = wkv_norm_gate(r, k, v, self.u, state[WKV][:, i], self.ln_x, gn_eps, lam=lam, g=g)
        state[ATT_X][:, i] = xn[:, -1]
        return linear(y, self.output).reshape(B, T, C)

    def channel_mix(self, x, state, i, eps):  # x (B, T, C) the residual stream -> (B, T, C); updates state layer i
        return channel_mix(self, x, state, i, eps)

    def token_layer(self):  # -> (step, decode.TokenLayer), or None where token mode does not apply
        return token_layer(self)


class Rwkv6Model(Rwkv5Model):
    """The RWKV-6 trunk (HF's Rwkv6Model): embeddings, layers, ln_out, no head."""
    config_class, layer_class, generation = Rwkv6Config, Layer, "RWKV-6"


class Rwkv6ForCausalLM(Rwkv5ForCausalLM):
    """An RWKV-6 language model: the trunk plus the head. Call it like HF's causal LMs:
    model(input_ids, state=...)."""
    config_class, layer_class, generation = Rwkv6Config, Layer, "RWKV-6"
    head_name = HEAD                         # head.weight, as RWKV-5's


CAUSAL_LM = Rwkv6ForCausalLM  # the classes generations.py's registry loads for RWKV-6
MODEL = Rwkv6Model
