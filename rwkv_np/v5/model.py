"""Rwkv5ForCausalLM (and its trunk, Rwkv5Model): the fast RWKV-5 engine, float32 (default) or
float64, HF-style calls on NumPy.

The same numbers as reference.py (read that first: this file computes its equations), with three
differences of method, none of meaning: the projections of all B x T tokens run as one matrix
product each through `rwkv_np.linear` (any weight storage: float32/64, float16, bfloat16, int8),
the WKV-5 recurrence runs in the Numba kernel (kernels.py), and everything stays in the model's
dtype. Single-token float32 steps of up to 16 rows run each layer as one compiled call
(decode.py: every variant, 5.0 to 5.2). Load-time work (the decays λ = -exp(time_decay) and
bonuses u, stacking the mixes, choosing each matrix's storage) happens once, in
`Layer.from_tensors`.

    model = Rwkv5ForCausalLM.from_pretrained("path/to/model")   # HF directory, .pth, rwkv.cpp .bin
    out = model(input_ids)                        # out.logits (B, T, V), out.state
    out = model(next_ids, state=out.state)        # continue where it stopped

RWKV-6's model (rwkv_np.v6.model) is these classes with its own Layer: the trunk, head, state and
call signature are the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..causal_lm import CausalLM, CausalLMOutput, ModelOutput  # noqa: F401 (importable from here)
from ..errors import InputError
from ..linear import SMALL_N, linear, linear_many
from ..nn import layer_norm
from ..pointwise import relu_square, sigmoid_mul
from ..storage import as_float, embed, storage_of
from ..v7.kernels import norm_and_mix_rows
from .config import Rwkv5Config
from .decode import decode, token_layer
from .names import EMBEDDINGS, HEAD
from .prompt import wkv_norm_gate
from .reference import decay_and_bonus
from .state import ATT_X, FFN_X, NAMES, WKV, check_state, empty_state

_DTYPES = {"float32": np.float32, "float64": np.float64}


def channel_mix(lay, x, state, i, eps):  # x (B, T, C) the residual stream -> (B, T, C); updates state layer i
    """reference.channel_mix of ln2(x), RWKV-5's and RWKV-6's (lay.ffn_maa: both as x + (prev - x)
    maa): sigmoid(xr Fr^T) (relu(xk Fk^T)^2 Fv^T), the elementwise work compiled (prompt.py)."""
    B, T, C = x.shape
    xn, (xk, xr) = norm_and_mix_rows(x, np.ascontiguousarray(state[FFN_X][:, i]), *lay.ln2, eps, lay.ffn_maa)
    key, rr = linear_many([(xk, lay.ffn_key), (xr, lay.ffn_receptance)])
    relu_square(key)
    out = linear(key, lay.ffn_value)
    sigmoid_mul(rr, out)
    state[FFN_X][:, i] = xn[:, -1]
    return out.reshape(B, T, C)


@dataclass
class Layer:
    """One RWKV-5 layer's weights, ready to run. Matrices are (out, in), in the chosen storage."""
    ln1: tuple; ln2: tuple                    # (weight, bias), each (C,)
    maa: np.ndarray                           # (4 or 3, C): 1 - time_mix key, value, receptance (, gate)
    key: object; value: object; receptance: object; output: object   # (C, C)
    gate: object                              # (C, C); None in 5.0
    w_log: np.ndarray                         # (H, N) log-decays λ = -exp(time_decay), clamped
    u: np.ndarray                             # (H, N) bonus
    ln_x: tuple                               # (weight, bias), each (C,)
    ffn_maa: np.ndarray                       # (2, C): 1 - feed_forward time_mix key, receptance
    ffn_key: object; ffn_receptance: object; ffn_value: object        # (F, C), (C, C), (C, F)

    @classmethod
    def from_tensors(cls, p: dict, i: int, dtype, store, config) -> Layer:
        pre = f"rwkv.blocks.{i}."
        vec = lambda name: as_float(p[pre + name], dtype)
        pair = lambda name: (vec(name + ".weight"), vec(name + ".bias"))
        # RWKV-5's blend prev + (x - prev) time_mix is x + (prev - x) maa with maa = 1 - time_mix
        # (taken in float64): RWKV-6's and RWKV-7's form, the one norm_and_mix computes
        maa = lambda ns: np.stack([1 - as_float(p[pre + n], np.float64).reshape(-1) for n in ns]).astype(dtype)
        names = ("key", "value", "receptance", "gate") if config.gated else ("key", "value", "receptance")
        bonus = "time_faaaa" if config.variant == "5.2" else "time_first"
        w_log, u = decay_and_bonus(as_float(p[pre + "attention.time_decay"], np.float64), config.num_heads,
                                   config.head_size, **{bonus: as_float(p[pre + "attention." + bonus], np.float64)})
        return cls(ln1=pair("ln1"), ln2=pair("ln2"),
                   maa=maa([f"attention.time_mix_{m}" for m in names]),
                   key=store(p[pre + "attention.key.weight"]), value=store(p[pre + "attention.value.weight"]),
                   receptance=store(p[pre + "attention.receptance.weight"]),
                   output=store(p[pre + "attention.output.weight"]),
                   gate=store(p[pre + "attention.gate.weight"]) if config.gated else None,
                   w_log=np.array(w_log, dtype), u=np.array(u, dtype), ln_x=pair("attention.ln_x"),
                   ffn_maa=maa([f"feed_forward.time_mix_{m}" for m in ("key", "receptance")]),
                   ffn_key=store(p[pre + "feed_forward.key.weight"]),
                   ffn_receptance=store(p[pre + "feed_forward.receptance.weight"]),
                   ffn_value=store(p[pre + "feed_forward.value.weight"]))

    def time_mix(self, x, state, i, eps, gn_eps):  # x (B, T, C) the residual stream -> (B, T, C)
        # updates state layer i
        """reference.time_mix of ln1(x) with every product over all B*T rows at once (see its
        equations), the elementwise work compiled (prompt.py): ln1 and the blends, then the WKV,
        ln_x and the gate in one kernel."""
        B, T, C = x.shape
        last = np.ascontiguousarray(state[ATT_X][:, i])
        xn, mixes = norm_and_mix_rows(x, last, *self.ln1, eps, self.maa)   # key, value, receptance (, gate)
        r, k, v, *g = linear_many([(mixes[2], self.receptance), (mixes[0], self.key), (mixes[1], self.value)]
                                  + ([(mixes[3], self.gate)] if self.gate is not None else []))  # g: silu in the kernel
        y, state[WKV][:, i] = wkv_norm_gate(r, k, v, self.u, state[WKV][:, i], self.ln_x, gn_eps,
                                            w_log=self.w_log, g=g[0] if g else None)
        state[ATT_X][:, i] = xn[:, -1]
        return linear(y, self.output).reshape(B, T, C)

    def channel_mix(self, x, state, i, eps):  # x (B, T, C) the residual stream -> (B, T, C); updates state layer i
        return channel_mix(self, x, state, i, eps)

    def token_layer(self):  # -> (step, decode.TokenLayer), or None where token mode does not apply
        return token_layer(self)


class Rwkv5Model:
    """The RWKV-5 trunk (HF's Rwkv5Model): embeddings, layers, ln_out, no head. Call it like HF's
    base models: model(input_ids, state=...).last_hidden_state (B, T, C)."""

    state_names = NAMES                      # the state's arrays, in order (state.py)
    with_head = False                        # from_pretrained reads head.weight
    config_class, layer_class, generation = Rwkv5Config, Layer, "RWKV-5"

    def __init__(self, config, tensors: dict, dtype="float32", weights: str | None = None):
        """tensors: HF-named (names.py). dtype: "float32" or "float64", the compute precision
        (activations, state). weights: how matrices are kept in memory (storage.storage_of);
        None = as on disk (memory-mapped float32 / float16 / bfloat16 / int8 stay so)."""
        if dtype not in _DTYPES:
            raise InputError(f"dtype: expected one of {sorted(_DTYPES)}, got {dtype!r}")
        self.config, self.dtype = config, np.dtype(_DTYPES[dtype])
        d, store = self.dtype, storage_of(self.dtype, weights)
        self.embeddings = storage_of(d, weights, edge=True)(tensors[EMBEDDINGS])           # (V, C)
        self.pre_ln = (as_float(tensors["rwkv.blocks.0.pre_ln.weight"], d),
                       as_float(tensors["rwkv.blocks.0.pre_ln.bias"], d))
        self.layers = [self.layer_class.from_tensors(tensors, i, d, store, config)
                       for i in range(config.num_hidden_layers)]
        self.ln_out = (as_float(tensors["rwkv.ln_out.weight"], d), as_float(tensors["rwkv.ln_out.bias"], d))
        # Token mode (decode.py): one compiled call per layer for single-token float32 steps.
        layers = [lay.token_layer() for lay in self.layers] if d == np.float32 else [None]
        self.token_layers = None if None in layers else layers

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", weights: str | None = None,
                        allow_nonfinite=False):
        """Load a model of this generation: an HF directory (config.json + model.safetensors), a
        BlinkDL .pth or an rwkv.cpp .bin (rwkv_np.load). Weights holding NaN or inf are refused
        unless allow_nonfinite=True."""
        from ..load import load
        _, config, tensors = load(path, head=cls.with_head, allow_nonfinite=allow_nonfinite)
        if not isinstance(config, cls.config_class):
            raise InputError(f"{os.fspath(path)}: not an {cls.generation} model ({type(config).__name__})")
        return cls(config, tensors, dtype, weights)

    def check_state(self, state, batch: int) -> list[np.ndarray]:
        """A caller's state for `batch` sequences, validated, as new arrays in the model's dtype."""
        return check_state(state, self.config, batch, self.dtype)

    def identity(self) -> tuple[dict, bytes]:
        """What ties a saved state to this model (state_file.py): the config fields that fix the
        state's meaning and shapes, and bytes of the weights (each layer's bonus u, rounded to
        float16)."""
        d = self.config.to_dict()
        fields = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "head_size", "intermediate_size",
                  "layer_norm_epsilon", "group_norm_eps", "variant", "time_mix_extra_dim", "time_decay_extra_dim")
        weights = b"".join(np.ascontiguousarray(lay.u, dtype="<f2").tobytes() for lay in self.layers)
        return {f: d[f] for f in fields if f in d}, weights

    def embed(self, input_ids):  # (B, T) or (T,) ints -> (B, T, C)
        return embed(self.embeddings, input_ids, self.dtype)

    def __call__(self, input_ids=None, state=None, use_cache=None, output_hidden_states=False,
                 output_attentions=False, inputs_embeds=None, attention_mask=None) -> ModelOutput:
        """attention_mask is accepted for HF compatibility and ignored (RWKV has none)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            x = np.asarray(inputs_embeds, self.dtype)
            if x.ndim != 3 or x.shape[-1] != self.config.hidden_size or x.size == 0:
                raise InputError(f"inputs_embeds: expected (B, T, {self.config.hidden_size}), got {x.shape}")
        else:
            x = self.embed(input_ids)
        B = x.shape[0]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        state = empty_state(self.config, B, self.dtype) if state is None else self.check_state(state, B)
        eps, gn_eps = self.config.layer_norm_epsilon, self.config.group_norm_eps
        x = layer_norm(x, *self.pre_ln, eps)
        hidden, attentions, ffns = [], [], []
        token_mode = (self.token_layers and x.shape[1] == 1 and B <= SMALL_N
                      and not output_hidden_states and not output_attentions)
        if token_mode:  # one compiled call per layer (decode.py), the same equations
            x = decode(self.token_layers, x[:, 0], state, eps, gn_eps)[:, None]
        else:
            for i, lay in enumerate(self.layers):
                att = lay.time_mix(x, state, i, eps, gn_eps)
                x = x + att
                ffn = lay.channel_mix(x, state, i, eps)
                x = x + ffn
                if output_hidden_states:
                    hidden.append(x)
                if output_attentions:
                    attentions.append(att)
                    ffns.append(ffn)
        x = layer_norm(x, *self.ln_out, eps)
        if output_hidden_states:
            hidden.append(x)
        return ModelOutput(last_hidden_state=x, state=state if use_cache else None,
                           hidden_states=tuple(hidden) if output_hidden_states else None,
                           attentions=tuple(attentions) if output_attentions else None,
                           feed_forward=tuple(ffns) if output_attentions else None)


class Rwkv5ForCausalLM(CausalLM, Rwkv5Model):
    """An RWKV-5 language model: the trunk plus the head (causal_lm.CausalLM). Call it like HF's
    causal LMs: model(input_ids, state=...). Construct it as Rwkv5Model; tensors also hold
    head.weight unless tie_word_embeddings. Its state: [att_x, ffn_x, wkv] (state.py)."""

    head_name = HEAD


CAUSAL_LM = Rwkv5ForCausalLM  # the classes generations.py's registry loads for RWKV-5
MODEL = Rwkv5Model
