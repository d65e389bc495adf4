"""RwkvModel and RwkvForCausalLM: the fast engine, with HF transformers' API on NumPy arrays.

Same numbers as reference.py (the readable float64 model), computed in float32 (default) or
float64 with the projections of all T tokens as one matrix product and only the WKV recurrence
run token by token (Numba, kernels.py). Load-time work — -exp(time_decay), flattening time_mix,
rescale factors, dtype conversion — happens once, in `Block.from_state_dict`.

    model = RwkvForCausalLM.from_pretrained("path/to/dir")
    out = model(input_ids)                        # out.logits (B, T, V), out.state
    out = model(next_ids, state=out.state)        # continue where it stopped
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..linear import SMALL_N, linear, linear_many
from ..nn import cross_entropy, layer_norm
from ..pointwise import relu_square, sigmoid_mul
from ..storage import as_float, compute_dtype, embed, storage_of
from .config import RwkvConfig
from .decode import decode, token_layer
from .kernels import norm_and_mix_rows, wkv_forward
from .state import ATT_X, DEN, FFN_X, MAX, NUM, NAMES, check_state, empty_state



@dataclass
class RwkvOutput:
    last_hidden_state: np.ndarray            # (B, T, H) after ln_out
    state: list | None = None                # five (B, H, L) arrays, see state.py
    hidden_states: tuple | None = None       # L + 1 of (B, T, H): each block's output, then ln_out's
    attentions: tuple | None = None          # L of (B, T, H): each block's attention-branch output
    feed_forward: tuple | None = None        # L of (B, T, H): each block's feed-forward-branch output
                                             # (not in HF; given with output_attentions)


@dataclass
class RwkvCausalLMOutput:
    loss: float | None = None                # mean next-token cross-entropy (nats)
    logits: np.ndarray | None = None         # (B, T, V)
    state: list | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    feed_forward: tuple | None = None


@dataclass
class Block:
    """One layer's weights, ready to run. Matrices are (out, in) as stored: y = x @ W.T."""
    ln1_weight: np.ndarray; ln1_bias: np.ndarray          # (H,)
    att_mix_k: np.ndarray; att_mix_v: np.ndarray; att_mix_r: np.ndarray  # (H,)
    att_key: np.ndarray; att_value: np.ndarray; att_receptance: np.ndarray  # (A, H)
    att_output: np.ndarray                                # (H, A)
    time_decay: np.ndarray                                # (A,) w = -exp(raw time_decay), < 0
    time_first: np.ndarray                                # (A,) u
    ln2_weight: np.ndarray; ln2_bias: np.ndarray          # (H,)
    ffn_mix_k: np.ndarray; ffn_mix_r: np.ndarray          # (H,)
    ffn_key: np.ndarray                                   # (I, H)
    ffn_receptance: np.ndarray                            # (H, H)
    ffn_value: np.ndarray                                 # (H, I)
    scale: float                                          # 2**-(i // rescale_every): HF's rescaling
    halve: bool                                           # x /= 2 after this block (rescale_every)

    @classmethod
    def from_state_dict(cls, p: dict, i: int, config: RwkvConfig, dtype, store) -> "Block":
        g = lambda name: as_float(p[f"rwkv.blocks.{i}.{name}"], dtype)
        m = lambda name: store(p[f"rwkv.blocks.{i}.{name}"])  # a matrix, in the chosen storage
        every = config.rescale_every
        return cls(
            ln1_weight=g("ln1.weight"), ln1_bias=g("ln1.bias"),
            att_mix_k=g("attention.time_mix_key")[0, 0], att_mix_v=g("attention.time_mix_value")[0, 0],
            att_mix_r=g("attention.time_mix_receptance")[0, 0],
            att_key=m("attention.key.weight"), att_value=m("attention.value.weight"),
            att_receptance=m("attention.receptance.weight"), att_output=m("attention.output.weight"),
            # In float64 first so that a float32 model gets the correctly rounded w.
            time_decay=(-np.exp(as_float(p[f"rwkv.blocks.{i}.attention.time_decay"], np.float64))).astype(dtype),
            time_first=g("attention.time_first"),
            ln2_weight=g("ln2.weight"), ln2_bias=g("ln2.bias"),
            ffn_mix_k=g("feed_forward.time_mix_key")[0, 0], ffn_mix_r=g("feed_forward.time_mix_receptance")[0, 0],
            ffn_key=m("feed_forward.key.weight"), ffn_receptance=m("feed_forward.receptance.weight"),
            ffn_value=m("feed_forward.value.weight"),
            # HF divides output/value weights by 2**(i // every); dividing the product by the same
            # power of two is bit-identical and keeps the memory-mapped weights uncopied.
            scale=2.0 ** -(i // every) if every > 0 else 1.0,
            halve=every > 0 and (i + 1) % every == 0)


def run_block(blk: Block, i: int, x, state, eps):  # x (B, T, H) -> x, attention and ffn branches
    """reference.py's block over all B x T tokens: each product one GEMM (independent ones in one
    batch of pool tasks: linear_many), the gates and relu^2 compiled in place (pointwise.py)."""
    B, T, H = x.shape
    xa, (xk, xv, xr) = norm_and_mix_rows(x, np.ascontiguousarray(state[ATT_X][:, :, i]), blk.ln1_weight,
                                         blk.ln1_bias, eps, np.stack([blk.att_mix_k, blk.att_mix_v, blk.att_mix_r]))
    k, v, r = linear_many([(xk, blk.att_key), (xv, blk.att_value), (xr, blk.att_receptance)])
    wkv, (a, b, p) = wkv_forward(blk.time_decay, blk.time_first, k.reshape(B, T, -1), v.reshape(B, T, -1),
                                 (state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i]))
    state[NUM][:, :, i], state[DEN][:, :, i], state[MAX][:, :, i] = a, b, p
    state[ATT_X][:, :, i] = xa[:, -1]
    rwkv = wkv.reshape(B * T, -1)                          # a view: wkv_forward's output is contiguous
    sigmoid_mul(r, rwkv)                                   # sigmoid(r) * wkv
    att = linear(rwkv, blk.att_output).reshape(B, T, H)
    if blk.scale != 1.0:
        att *= blk.scale
    x = x + att

    xf, (fk, fr) = norm_and_mix_rows(x, np.ascontiguousarray(state[FFN_X][:, :, i]), blk.ln2_weight,
                                     blk.ln2_bias, eps, np.stack([blk.ffn_mix_k, blk.ffn_mix_r]))
    key, rr = linear_many([(fk, blk.ffn_key), (fr, blk.ffn_receptance)])
    relu_square(key)                                       # relu(key)^2
    ffn = linear(key, blk.ffn_value)
    sigmoid_mul(rr, ffn)                                   # sigmoid(rr) * (key @ W_value.T)
    ffn = ffn.reshape(B, T, H)
    state[FFN_X][:, :, i] = xf[:, -1]
    if blk.scale != 1.0:
        ffn *= blk.scale
    x = x + ffn
    if blk.halve:
        x = x / 2
    return x, att, ffn


class RwkvModel:
    """The RWKV-4 trunk: embeddings -> blocks -> ln_out. Call it like HF's RwkvModel."""

    def __init__(self, config: RwkvConfig, tensors: dict, dtype="float32", weights: str | None = None):
        """dtype: "float32" or "float64", the compute precision (activations, state).
        weights: how matrices are kept in memory (see `storage_of`); None = as on disk."""
        self.config, self.dtype = config, compute_dtype(dtype)
        d = self.dtype
        store = storage_of(d, weights)
        self.embeddings = storage_of(d, weights, edge=True)(tensors["rwkv.embeddings.weight"])  # (V, H)
        self.pre_ln = (as_float(tensors["rwkv.blocks.0.pre_ln.weight"], d),
                       as_float(tensors["rwkv.blocks.0.pre_ln.bias"], d))   # (H,), (H,)
        self.blocks = [Block.from_state_dict(tensors, i, config, d, store) for i in range(config.num_hidden_layers)]
        self.ln_out = (as_float(tensors["rwkv.ln_out.weight"], d), as_float(tensors["rwkv.ln_out.bias"], d))
        # Token mode (decode.py): one compiled call per layer for single-token float32 steps.
        layers = [token_layer(blk) for blk in self.blocks] if d == np.float32 else [None]
        self.token_layers = None if None in layers else layers

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", weights: str | None = None,
                        allow_nonfinite=False) -> "RwkvModel":
        """Load a model: an HF directory (config.json + model.safetensors or a sharded index), or
        a BlinkDL .pth / pytorch_model.bin / rwkv.cpp .bin file (read without torch).
        Weights holding NaN or inf are refused unless allow_nonfinite=True. A model of another
        RWKV generation loads as that generation's trunk class (its model module's MODEL)."""
        from ..load import load
        gen, config, tensors = load(path, head=False, allow_nonfinite=allow_nonfinite)
        model_class = cls if isinstance(config, RwkvConfig) else gen.module("model").MODEL
        return model_class(config, tensors, dtype, weights)

    def embed(self, input_ids):  # (B, T) ints -> (B, T, H)
        return embed(self.embeddings, input_ids, self.dtype)

    def __call__(self, input_ids=None, state=None, use_cache=None, output_hidden_states=False,
                 output_attentions=False, inputs_embeds=None, attention_mask=None) -> RwkvOutput:
        """attention_mask is accepted for HF compatibility and ignored, as in HF (RWKV has none)."""
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
        state = empty_state(self.config, B, self.dtype) if state is None \
            else check_state(state, self.config, B, self.dtype)
        eps = self.config.layer_norm_epsilon
        x = layer_norm(x, *self.pre_ln, eps)
        hidden, attentions, ffns = [], [], []
        token_mode = (self.token_layers and x.shape[1] == 1 and B <= SMALL_N
                      and not output_hidden_states and not output_attentions)
        if token_mode:
            x = decode(self.token_layers, x[:, 0], state, eps)[:, None]
        for i, blk in enumerate([] if token_mode else self.blocks):
            x, att, ffn = run_block(blk, i, x, state, eps)
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attentions.append(att)
                ffns.append(ffn)
        x = layer_norm(x, *self.ln_out, 1e-5)  # HF's ln_out always uses eps 1e-5
        return RwkvOutput(last_hidden_state=x, state=state if use_cache else None,
                          hidden_states=tuple(hidden + [x]) if output_hidden_states else None,
                          attentions=tuple(attentions) if output_attentions else None,
                          feed_forward=tuple(ffns) if output_attentions else None)


class RwkvForCausalLM:
    """RwkvModel plus the language-model head. Call it like HF's RwkvForCausalLM."""

    state_names = NAMES                      # the state's arrays, in order (state.py)

    def __init__(self, config: RwkvConfig, tensors: dict, dtype="float32", weights: str | None = None):
        self.rwkv = RwkvModel(config, tensors, dtype, weights)
        self.config = config
        self.head = storage_of(self.rwkv.dtype, weights, edge=True)(tensors["head.weight"])  # (V, H)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype="float32", weights: str | None = None,
                        allow_nonfinite=False) -> "RwkvForCausalLM":
        """As RwkvModel.from_pretrained, with the language-model head. A model of another RWKV
        generation (config model_type, or its tensor names) loads as that generation's class."""
        from ..load import load
        gen, config, tensors = load(path, head=True, allow_nonfinite=allow_nonfinite)
        model_class = cls if isinstance(config, RwkvConfig) else gen.module("model").CAUSAL_LM
        return model_class(config, tensors, dtype, weights)

    @property
    def dtype(self) -> np.dtype:
        return self.rwkv.dtype

    def check_state(self, state, batch: int) -> list[np.ndarray]:
        """A caller's state for `batch` sequences, validated, as new arrays in the model's dtype."""
        return check_state(state, self.config, batch, self.dtype)

    def identity(self) -> tuple[dict, bytes]:
        """What ties a saved state to this model (state_file.py): the config fields that fix the
        state's meaning and shapes, and bytes of the weights (time_first, rounded to float16)."""
        fields = ("vocab_size", "hidden_size", "num_hidden_layers", "attention_hidden_size",
                  "intermediate_size", "layer_norm_epsilon", "rescale_every")
        weights = b"".join(np.ascontiguousarray(blk.time_first, dtype="<f2").tobytes() for blk in self.rwkv.blocks)
        return {f: getattr(self.config, f) for f in fields}, weights

    def generate(self, input_ids, max_new_tokens: int = 20, **kwargs):
        """HF-style generate (greedy or sampled); see rwkv_np.generation.generate for the options."""
        from ..generation import generate
        return generate(self, input_ids, max_new_tokens, **kwargs)

    def __call__(self, input_ids=None, state=None, use_cache=None, output_hidden_states=False,
                 output_attentions=False, labels=None, inputs_embeds=None, attention_mask=None,
                 logits_to_keep: int = 0) -> RwkvCausalLMOutput:
        """logits_to_keep > 0 computes the logits of the last that many positions only (HF's option)."""
        out = self.rwkv(input_ids, state, use_cache, output_hidden_states, output_attentions,
                        inputs_embeds, attention_mask)
        x = out.last_hidden_state
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        B, T, H = x.shape
        logits = linear(x.reshape(B * T, H), self.head).reshape(B, T, -1)
        loss = None if labels is None else cross_entropy(logits, labels)
        return RwkvCausalLMOutput(loss=loss, logits=logits, state=out.state,
                                  hidden_states=out.hidden_states, attentions=out.attentions,
                                  feed_forward=out.feed_forward)


CAUSAL_LM = RwkvForCausalLM  # the classes generations.py's registry loads for RWKV-4
MODEL = RwkvModel
