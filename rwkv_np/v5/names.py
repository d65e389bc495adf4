"""RWKV-5 tensor names: the HF rwkv5 layout (Rwkv5ForCausalLM) is rwkv_np's, and one explicit map
per foreign format.

HF layout, per block i, matrices (out, in) so that y = x @ W.T (spec section 2.3c); 5.0 / 5.1
differences in brackets (config.py's variant table):

    rwkv.embeddings.weight (V, C)          rwkv.blocks.0.pre_ln.{weight,bias} (C)   (block 0 only)
    rwkv.blocks.i.ln1 / ln2.{weight,bias} (C)
    rwkv.blocks.i.attention.time_mix_{key,value,receptance,gate} (1, 1, C)   [5.0: no _gate]
    rwkv.blocks.i.attention.time_decay (H, N)   [5.0/5.1: (H,)]     raw: w = exp(-exp(time_decay))
    rwkv.blocks.i.attention.time_faaaa (H, N)   [5.0/5.1: time_first (H,), used as u = exp(time_first)]
    rwkv.blocks.i.attention.{receptance,key,value,gate,output}.weight (C, C)   [5.0: no gate]
    rwkv.blocks.i.attention.ln_x.{weight,bias} (C)
    rwkv.blocks.i.feed_forward.time_mix_{key,receptance} (1, 1, C)
    rwkv.blocks.i.feed_forward.key.weight (F, C)  receptance.weight (C, C)  value.weight (C, F)
    rwkv.ln_out.{weight,bias} (C)          head.weight (V, C)

BlinkDL's `.pth` (RWKV-LM RWKV_Tmix_x052 / RWKV_CMix_x052) names the same tensors emb / blocks.i.ln0,
ln1, ln2 / att.* / ffn.* / ln_out / head, with time_mix_{k,v,r,g}; same values, and shapes except
that a per-head time_decay / time_first may be (H, 1). rwkv.cpp's `.bin` uses BlinkDL's names but
stores the time_mix vectors flat (C,), time_decay as the decay w = exp(-exp(time_decay)) shaped
(H, N, 1) or (H, 1, 1), 5.0's time_first as u = exp(time_first) (H, 1, 1), time_faaaa raw (H, N, 1)
(its convert_pytorch_to_ggml.py); `from_rwkvcpp` undoes that.
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import ModelFileError
from .config import RWKVCPP_GROUP_NORM_EPS, Rwkv5Config

CONFIG = Rwkv5Config
EMBEDDINGS, HEAD = "rwkv.embeddings.weight", "head.weight"

_MIX = {"k": "key", "v": "value", "r": "receptance", "g": "gate"}    # BlinkDL's time_mix_ suffixes
_ATT = ("time_decay", "time_faaaa", "time_first", "receptance.weight", "key.weight", "value.weight",
        "gate.weight", "output.weight", "ln_x.weight", "ln_x.bias")
_FFN = ("key.weight", "receptance.weight", "value.weight")
# Stored decays w = exp(-exp(td)) of 1 (td below about -17 in float32) or 0 (td above about 4.6)
# give log(-log(w)) = -inf / +inf: -log(w) is kept inside [1e-30, 1e30], whose exp(-.) is 1 and 0.
_NEG_LOG_W_RANGE = (1e-30, 1e30)


def expected_shapes(config: Rwkv5Config, head: bool = True) -> dict[str, tuple[int, ...]]:
    """{HF name: shape} of every tensor a model with this config has (head.weight only if head)."""
    V, C, F, H, N = (config.vocab_size, config.hidden_size, config.intermediate_size,
                     config.num_heads, config.head_size)
    per_channel = config.variant == "5.2"
    shapes = {EMBEDDINGS: (V, C), "rwkv.blocks.0.pre_ln.weight": (C,), "rwkv.blocks.0.pre_ln.bias": (C,)}
    for i in range(config.num_hidden_layers):
        blk = f"rwkv.blocks.{i}"
        for ln in ("ln1", "ln2", "attention.ln_x"):
            shapes[f"{blk}.{ln}.weight"] = shapes[f"{blk}.{ln}.bias"] = (C,)
        projections = ("key", "value", "receptance", "gate") if config.gated else ("key", "value", "receptance")
        for p in projections:
            shapes[f"{blk}.attention.time_mix_{p}"] = (1, 1, C)
            shapes[f"{blk}.attention.{p}.weight"] = (C, C)
        shapes[f"{blk}.attention.output.weight"] = (C, C)
        shapes[f"{blk}.attention.time_decay"] = (H, N) if per_channel else (H,)
        shapes[f"{blk}.attention." + ("time_faaaa" if per_channel else "time_first")] = (H, N) if per_channel else (H,)
        shapes[f"{blk}.feed_forward.time_mix_key"] = shapes[f"{blk}.feed_forward.time_mix_receptance"] = (1, 1, C)
        shapes[f"{blk}.feed_forward.key.weight"] = (F, C)
        shapes[f"{blk}.feed_forward.receptance.weight"] = (C, C)
        shapes[f"{blk}.feed_forward.value.weight"] = (C, F)
    shapes["rwkv.ln_out.weight"] = shapes["rwkv.ln_out.bias"] = (C,)
    if head:
        shapes[HEAD] = (V, C)
    return shapes


def matrices(config: Rwkv5Config) -> set[str]:
    """The weight matrices (out, in) that go through a weight storage (storage.storage_of: the
    projections, FFN, embeddings and head); 5.2's time_decay and time_faaaa (H, N) are per-head
    vectors, kept float."""
    return {n for n, shape in expected_shapes(config).items()
            if len(shape) == 2 and not n.endswith((".time_decay", ".time_faaaa"))}


def hf_name(name: str) -> str:
    """BlinkDL name (.pth, rwkv.cpp) -> HF name; ModelFileError for a name RWKV-5 does not have."""
    top = {"emb.weight": EMBEDDINGS, "ln_out.weight": "rwkv.ln_out.weight", "ln_out.bias": "rwkv.ln_out.bias",
           "head.weight": HEAD}
    if name in top:
        return top[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", name)
    part, rest = (m.group(2), m.group(3)) if m else (None, None)
    mix = re.fullmatch(r"time_mix_([kvrg])", rest or "")
    if mix and (part == "att" or mix.group(1) in "kr"):
        rest = "time_mix_" + _MIX[mix.group(1)]
    elif not (part in ("ln0", "ln1", "ln2") and rest in ("weight", "bias")
              or part == "att" and rest in _ATT or part == "ffn" and rest in _FFN):
        raise ModelFileError(f"{name}: not an RWKV-5 tensor name rwkv_np knows")
    part = {"ln0": "pre_ln", "att": "attention", "ffn": "feed_forward"}.get(part, part)
    return f"rwkv.blocks.{m.group(1)}.{part}.{rest}"


def _per_head_flat(name: str, x):
    """A per-head time_decay / time_first stored (H, 1) or (H, 1, 1) -> (H,); others unchanged."""
    if name.endswith(("time_decay", "time_first")) and x.ndim > 1 and all(d == 1 for d in x.shape[1:]):
        return x.reshape(-1)
    return x


def from_blinkdl(tensors: dict) -> dict:
    """A BlinkDL `.pth` state dict -> HF names (values unchanged; per-head decays made (H,))."""
    out = {}
    for name, x in tensors.items():
        hf = hf_name(name)
        out[hf] = _per_head_flat(hf, x)
    return out


def from_hf(tensors: dict) -> dict:
    """HF names as found in a file -> Rwkv5ForCausalLM's: a bare Rwkv5Model's keys lack `rwkv.`."""
    return {n if n.startswith(("rwkv.", "head.weight")) else "rwkv." + n: x for n, x in tensors.items()}


def from_rwkvcpp(header: dict, tensors: dict, source: str = "rwkv.cpp file") -> tuple[Rwkv5Config, dict]:
    """An rwkv.cpp file's header and BlinkDL-named tensors -> (config, HF-named tensors).

    Undone here: time_mix (C,) -> (1, 1, C); time_decay from the stored decay w back to the raw
    parameter td = log(-log(w)) (float64, so exp(-exp(td)) gives w back to ~1e-16); time_first from
    the stored u = exp(tf) back to tf = log(u); the trailing 1 of time_decay / time_faaaa /
    time_first. The config gets rwkv.cpp's group-norm eps, 1e-5 (config.py)."""
    out = {}
    for name, x in tensors.items():
        hf = hf_name(name)
        if "time_mix" in hf:
            x = x.reshape(1, 1, -1)
        elif hf.endswith("time_decay"):
            w = np.asarray(x, np.float64)
            if not np.all((w >= 0) & (w <= 1)):
                raise ModelFileError(f"{source}: {name} holds values outside [0, 1]; rwkv.cpp stores an "
                                     "RWKV-5 time_decay as the decay exp(-exp(time_decay))")
            with np.errstate(divide="ignore"):
                x = np.log(np.clip(-np.log(w), *_NEG_LOG_W_RANGE))
        elif hf.endswith("time_first"):
            u = np.asarray(x, np.float64)
            if not np.all(u > 0):
                raise ModelFileError(f"{source}: {name} holds values <= 0; rwkv.cpp stores an RWKV-5.0 "
                                     "time_first as exp(time_first)")
            x = np.log(u)
        if hf.endswith(("time_decay", "time_faaaa", "time_first")) and x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        out[hf] = _per_head_flat(hf, x)
    config = infer_config(out, source)
    config.group_norm_eps = RWKVCPP_GROUP_NORM_EPS
    config.extra["rwkvcpp_version"] = header["version"]
    found = (config.vocab_size, config.hidden_size, config.num_hidden_layers)
    if found != (header["n_vocab"], header["n_embed"], header["n_layer"]):
        raise ModelFileError(f"{source}: the header says n_vocab, n_embed, n_layer = {header['n_vocab']}, "
                             f"{header['n_embed']}, {header['n_layer']}; the tensors have {found}")
    return config, out


def variant_of(tensors: dict, source: str = "tensors") -> str:
    """"5.0", "5.1" or "5.2" from block 0's HF-named tensors (ChatRWKV's and rwkv.cpp's rule: a gate
    means 5.1 or later, a decay per channel means 5.2)."""
    decay = tensors.get("rwkv.blocks.0.attention.time_decay")
    if decay is None:
        raise ModelFileError(f"{source}: cannot infer the model's sizes (missing tensor "
                             "rwkv.blocks.0.attention.time_decay)")
    gated = "rwkv.blocks.0.attention.gate.weight" in tensors
    per_channel = decay.ndim == 2 and decay.shape[1] > 1
    if per_channel and not gated:
        raise ModelFileError(f"{source}: time_decay has a value per channel {decay.shape} but there is no "
                             "attention.gate: no RWKV-5 variant has that layout")
    return "5.2" if per_channel else "5.1" if gated else "5.0"


def infer_config(tensors: dict, source: str = "tensors") -> Rwkv5Config:
    """The config implied by HF-named tensor shapes: the variant and H from block 0's time_decay
    ((H, N) or (H,)), N = C / H, F from feed_forward.key; defaults otherwise (group_norm_eps
    BlinkDL's 64e-5: from_rwkvcpp sets rwkv.cpp's)."""
    def shape(name):
        if name not in tensors:
            raise ModelFileError(f"{source}: cannot infer the model's sizes (missing tensor {name})")
        return tensors[name].shape

    V, C = shape(EMBEDDINGS)
    L = 0
    while f"rwkv.blocks.{L}.ln1.weight" in tensors:
        L += 1
    variant = variant_of(tensors, source)
    H = shape("rwkv.blocks.0.attention.time_decay")[0]
    if C % H:
        raise ModelFileError(f"{source}: {H} heads do not divide hidden size {C}")
    try:
        return Rwkv5Config(vocab_size=int(V), hidden_size=int(C), num_hidden_layers=L, head_size=int(C // H),
                           intermediate_size=int(shape("rwkv.blocks.0.feed_forward.key.weight")[0]),
                           variant=variant)
    except ValueError as e:
        raise ModelFileError(f"{source}: the tensor shapes describe an impossible model ({e})") from None
