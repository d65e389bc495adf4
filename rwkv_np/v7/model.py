"""Rwkv7ForCausalLM (and its trunk, Rwkv7Model): the fast RWKV-7 engine, float32 (default) or
float64, HF-style calls on NumPy.

The same numbers as reference.py (read that first: this file computes its equations), with
differences of method, none of meaning: the projections and LoRAs of all B x T tokens run as one
matrix product each through `rwkv_np.linear` (any weight storage: float32/64, float16, bfloat16,
int8); the layer norms with their token-shift blends, the elementwise work around the WKV-7
recurrence and the recurrence itself run in Numba (kernels.py); single-token float32 steps of up
to 16 rows run each layer as one compiled call (decode.py); everything stays in the model's dtype.
Load-time work (flattening the mixes, choosing each matrix's storage) happens once, in
`Layer.from_tensors` (and decode.token_layer).

    model = Rwkv7ForCausalLM.from_pretrained("path/to/model")   # fla directory, .pth, rwkv.cpp .bin
    out = model(input_ids)                        # out.logits (B, T, V), out.state
    out = model(next_ids, state=out.state)        # continue where it stopped
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..causal_lm import CausalLM, CausalLMOutput, ModelOutput
from ..errors import InputError
from ..linear import SMALL_N, linear
from ..nn import layer_norm, sigmoid
from ..storage import as_float, compute_dtype, embed, storage_of
from .config import Rwkv7Config
from .decode import decode, token_layer
from .kernels import norm_and_mix, wkv7_forward, wkv7_inputs, wkv7_outputs
from .names import EMBEDDINGS, HEAD
from .reference import DECAY_SCALE
from .state import ATT_X, FFN_X, NAMES, WKV, check_state, empty_state

Rwkv7Output = ModelOutput                 # causal_lm.py's records, under RWKV-7's names
Rwkv7CausalLMOutput = CausalLMOutput


@dataclass
class Layer:
    """One layer's weights, ready to run. Matrices are (out, in), in the chosen storage: y = x @ W.T."""
    attn_norm: tuple                          # (weight, bias), each (C,)
    ffn_norm: tuple                           # (weight, bias), each (C,)
    mix: np.ndarray                           # (6, C): x_r, x_w, x_k, x_v, x_a, x_g
    r_proj: object; k_proj: object; v_proj: object; o_proj: object   # (C, C)
    w_lora: tuple                             # (down (D_w, C), up (C, D_w), bias (C,))
    a_lora: tuple                             # (down (D_a, C), up (C, D_a), bias (C,))
    g_lora: tuple                             # (down (D_g, C), up (C, D_g), None)
    v_lora: tuple | None                      # (down (D_v, C), up (C, D_v), bias (C,)); None in layer 0
    k_k: np.ndarray; k_a: np.ndarray          # (C,)
    r_k: np.ndarray                           # (H, N)
    g_norm: tuple                             # (weight, bias), each (C,)
    ffn_x_k: np.ndarray                       # (C,)
    ffn_key: object                           # (F, C)
    ffn_value: object                         # (C, F)

    @classmethod
    def from_tensors(cls, p: dict, i: int, dtype, store) -> "Layer":
        pre = f"model.layers.{i}."
        vec = lambda name: as_float(p[pre + name], dtype)  # noqa: E731
        pair = lambda name: (vec(name + ".weight"), vec(name + ".bias"))  # noqa: E731

        def lora(kind, bias=True):
            if pre + f"attn.{kind}_lora.lora.0.weight" not in p:
                return None
            # A BlinkDL or rwkv.cpp file's LoRA matrices arrive as transposed views (names.py);
            # `linear` reads rows, so they are copied once here (.copy keeps a Bfloat16 a Bfloat16;
            # an int8 file's Int8Weight is row-major already).
            down, up = (p[pre + f"attn.{kind}_lora.lora.{j}.weight"] for j in (0, 2))
            down, up = (store(m if not isinstance(m, np.ndarray) or m.flags.c_contiguous else m.copy(order="C"))
                        for m in (down, up))
            return down, up, vec(f"attn.{kind}_lora.lora.2.bias") if bias else None

        return cls(attn_norm=pair("attn_norm"), ffn_norm=pair("ffn_norm"),
                   mix=np.stack([vec(f"attn.x_{m}").reshape(-1) for m in "rwkvag"]),
                   r_proj=store(p[pre + "attn.r_proj.weight"]), k_proj=store(p[pre + "attn.k_proj.weight"]),
                   v_proj=store(p[pre + "attn.v_proj.weight"]), o_proj=store(p[pre + "attn.o_proj.weight"]),
                   w_lora=lora("w"), a_lora=lora("a"), g_lora=lora("g", bias=False), v_lora=lora("v"),
                   k_k=vec("attn.k_k"), k_a=vec("attn.k_a"), r_k=vec("attn.r_k"), g_norm=pair("attn.g_norm"),
                   ffn_x_k=vec("ffn.x_k"), ffn_key=store(p[pre + "ffn.key.weight"]),
                   ffn_value=store(p[pre + "ffn.value.weight"]))


def time_mix(lay: Layer, x, state, i, v_first, eps, gn_eps):  # x (B, T, C) the residual stream
    # -> out (B, T, C), v_first (B*T, C); updates state layer i
    """reference.time_mix of attn_norm(x) (see its equations), as matrix products over all B*T rows
    and three compiled passes: the norm and six blends (kernels.norm_and_mix), the elementwise
    work before the WKV (wkv7_inputs) and after it (wkv7_outputs)."""
    B, T, C = x.shape
    H, N = lay.r_k.shape
    xa, (xr, xw, xk, xv, xa_, xg) = norm_and_mix(x, np.ascontiguousarray(state[ATT_X][:, i]),
                                                 *lay.attn_norm, eps, lay.mix)
    r, k, v = linear(xr, lay.r_proj), linear(xk, lay.k_proj), linear(xv, lay.v_proj)   # (B*T, C)
    (w1, w2, w0), (a1, a2, a0), (g1, g2, _) = lay.w_lora, lay.a_lora, lay.g_lora
    zw = linear(np.tanh(linear(xw, w1)), w2)                  # the LoRAs; biases in wkv7_inputs
    za = linear(linear(xa_, a1), a2)
    g = linear(sigmoid(linear(xg, g1)), g2)                   # the output gate
    first = lay.v_lora is None                                # layer 0: v_first is its v
    if first:
        zv, v0, v_first = v, a0, np.empty_like(v)             # zv, v0 unread
    else:
        zv, v0 = linear(linear(xv, lay.v_lora[0]), lay.v_lora[1]), lay.v_lora[2]
    w_log, k, v, a, b = wkv7_inputs(first, k, v, v_first, zw, za, zv, (lay.k_k, lay.k_a, w0, a0, v0),
                                    x.dtype.type(-DECAY_SCALE), H)
    heads = lambda z: z.reshape(B, T, H, N)  # noqa: E731
    y, state[WKV][:, i] = wkv7_forward(heads(r), heads(w_log), heads(k), heads(v), heads(a), heads(b),
                                       state[WKV][:, i])
    state[ATT_X][:, i] = xa[:, -1]
    o = wkv7_outputs(y.reshape(B * T, C), r, k, v, g, lay.r_k, *lay.g_norm, gn_eps)
    return linear(o, lay.o_proj).reshape(B, T, C), v_first


def channel_mix(lay: Layer, x, state, i, eps):  # x (B, T, C) the residual stream -> (B, T, C)
    # updates state layer i
    """reference.channel_mix of ffn_norm(x): relu(xk Fk^T)^2 Fv^T, the norm and blend compiled."""
    B, T, C = x.shape
    xf, (xk,) = norm_and_mix(x, np.ascontiguousarray(state[FFN_X][:, i]), *lay.ffn_norm, eps,
                             lay.ffn_x_k[None])
    key = linear(xk, lay.ffn_key)
    np.maximum(key, 0, out=key)
    key *= key
    state[FFN_X][:, i] = xf[:, -1]
    return linear(key, lay.ffn_value).reshape(B, T, C)


class Rwkv7Model:
    """The RWKV-7 trunk (fla's RWKV7Model): embeddings, layers, final norm, no head. Call it like
    HF's base models: model(input_ids, state=...).last_hidden_state (B, T, C)."""

    state_names = NAMES                      # the state's arrays, in order (state.py)
    with_head = False                        # from_pretrained reads lm_head.weight

    def __init__(self, config: Rwkv7Config, tensors: dict, dtype="float32", weights: str | None = None):
        """tensors: HF-named (names.py). dtype: "float32" or "float64", the compute precision
        (activations, state). weights: how matrices are kept in memory (storage.storage_of);
        None = as on disk (memory-mapped float32 / float16 / bfloat16 / int8 stay so)."""
        self.config, self.dtype = config, compute_dtype(dtype)
        d, store = self.dtype, storage_of(self.dtype, weights)
        self.embeddings = storage_of(d, weights, edge=True)(tensors[EMBEDDINGS])           # (V, C)
        self.pre_norm = (as_float(tensors["model.layers.0.pre_norm.weight"], d),
                         as_float(tensors["model.layers.0.pre_norm.bias"], d))
        self.layers = [Layer.from_tensors(tensors, i, d, store) for i in range(config.num_hidden_layers)]
        self.norm = (as_float(tensors["model.norm.weight"], d), as_float(tensors["model.norm.bias"], d))
        # Token mode (decode.py): one compiled call per layer for single-token float32 steps.
        layers = [token_layer(lay, i == 0) for i, lay in enumerate(self.layers)] if d == np.float32 else [None]
        self.token_layers = None if None in layers else layers

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", weights: str | None = None,
                        allow_nonfinite=False):
        """Load an RWKV-7 model: an fla directory (config.json + model.safetensors), a BlinkDL .pth
        or an rwkv.cpp .bin (rwkv_np.load). Weights holding NaN or inf are refused unless
        allow_nonfinite=True."""
        from ..load import load
        _, config, tensors = load(path, head=cls.with_head, allow_nonfinite=allow_nonfinite)
        if not isinstance(config, Rwkv7Config):
            raise InputError(f"{os.fspath(path)}: not an RWKV-7 model ({type(config).__name__})")
        return cls(config, tensors, dtype, weights)

    def check_state(self, state, batch: int) -> list[np.ndarray]:
        """A caller's state for `batch` sequences, validated, as new arrays in the model's dtype."""
        return check_state(state, self.config, batch, self.dtype)

    def identity(self) -> tuple[dict, bytes]:
        """What ties a saved state to this model (state_file.py): the config fields that fix the
        state's meaning and shapes, and bytes of the weights (each layer's r_k, rounded to float16)."""
        fields = ("vocab_size", "hidden_size", "num_hidden_layers", "num_heads", "head_dim",
                  "intermediate_size", "norm_eps", "group_norm_eps")
        weights = b"".join(np.ascontiguousarray(lay.r_k, dtype="<f2").tobytes() for lay in self.layers)
        return {f: getattr(self.config, f) for f in fields}, weights

    def embed(self, input_ids):  # (B, T) or (T,) ints -> (B, T, C)
        return embed(self.embeddings, input_ids, self.dtype)

    def __call__(self, input_ids=None, state=None, use_cache=None, output_hidden_states=False,
                 output_attentions=False, inputs_embeds=None, attention_mask=None) -> Rwkv7Output:
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
        eps, gn_eps = self.config.norm_eps, self.config.group_norm_eps
        x = layer_norm(x, *self.pre_norm, eps)
        hidden, attentions, ffns, v_first = [], [], [], None
        token_mode = (self.token_layers and x.shape[1] == 1 and B <= SMALL_N
                      and not output_hidden_states and not output_attentions)
        if token_mode:  # one compiled call per layer (decode.py), the same equations
            x = decode(self.token_layers, x[:, 0], state, eps, gn_eps)[:, None]
        else:
            for i, lay in enumerate(self.layers):
                att, v_first = time_mix(lay, x, state, i, v_first, eps, gn_eps)
                x = x + att
                ffn = channel_mix(lay, x, state, i, eps)
                x = x + ffn
                if output_hidden_states:
                    hidden.append(x)
                if output_attentions:
                    attentions.append(att)
                    ffns.append(ffn)
        x = layer_norm(x, *self.norm, eps)
        if output_hidden_states:
            hidden.append(x)
        return ModelOutput(last_hidden_state=x, state=state if use_cache else None,
                           hidden_states=tuple(hidden) if output_hidden_states else None,
                           attentions=tuple(attentions) if output_attentions else None,
                           feed_forward=tuple(ffns) if output_attentions else None)


class Rwkv7ForCausalLM(CausalLM, Rwkv7Model):
    """An RWKV-7 language model: the trunk plus the head (causal_lm.CausalLM). Call it like HF's
    causal LMs: model(input_ids, state=...). Construct it as Rwkv7Model; tensors also hold
    lm_head.weight unless tie_word_embeddings. Its state: [att_x, ffn_x, wkv] (state.py)."""

    head_name = HEAD


CAUSAL_LM = Rwkv7ForCausalLM  # the classes generations.py's registry loads for RWKV-7
MODEL = Rwkv7Model
