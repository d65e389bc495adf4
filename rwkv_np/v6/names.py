"""RWKV-6 tensor names: the HF rwkv6 layout (Rwkv6ForCausalLM) is rwkv_np's, and one explicit map
per foreign format.

HF layout, per block i (spec section 3.2c; the same tensors, names and shapes as BlinkDL's `.pth`
under HF's module names). Projections are (out, in) so that y = x @ W.T; the LoRA matrices keep
BlinkDL's (in, out) orientation, y = x @ W:

    rwkv.embeddings.weight (V, C)          rwkv.blocks.0.pre_ln.{weight,bias} (C)   (block 0 only)
    rwkv.blocks.i.ln1 / ln2.{weight,bias} (C)
    rwkv.blocks.i.attention.time_maa_{x,w,k,v,r,g} (1, 1, C)        token-shift mixes ("maa")
    rwkv.blocks.i.attention.time_maa_w1 (C, 5 D_mix)                x -> 5 ranks, rows w, k, v, r, g
    rwkv.blocks.i.attention.time_maa_w2 (5, D_mix, C)               each rank -> C
    rwkv.blocks.i.attention.time_decay (1, 1, C)                    raw: λ = -exp(time_decay + LoRA)
    rwkv.blocks.i.attention.time_decay_w1 (C, D_decay)  time_decay_w2 (D_decay, C)
    rwkv.blocks.i.attention.time_faaaa (H, N)                       bonus u, raw
    rwkv.blocks.i.attention.{receptance,key,value,gate,output}.weight (C, C)
    rwkv.blocks.i.attention.ln_x.{weight,bias} (C)
    rwkv.blocks.i.feed_forward.time_maa_{k,r} (1, 1, C)
    rwkv.blocks.i.feed_forward.key.weight (F, C)  receptance.weight (C, C)  value.weight (C, F)
    rwkv.ln_out.{weight,bias} (C)          head.weight (V, C)

BlinkDL's `.pth` (RWKV-LM RWKV_Tmix_x060 / RWKV_CMix_x060) names them emb / blocks.i.ln0, ln1, ln2
/ att.* / ffn.* / ln_out / head. rwkv.cpp's `.bin` (convert_pytorch_to_ggml.py, v6 branch) squeezes
every time_* (mixes (C,), time_faaaa (H, N, 1), time_decay reshaped (H, N, 1), kept raw: v6 is
exponentiated at run time) and transposes the LoRA matrices: time_maa_w1 (5 D_mix, C),
time_maa_w2 (5, C, D_mix), time_decay_w1 (D_decay, C), time_decay_w2 (C, D_decay); `from_rwkvcpp`
undoes that (transposes as views).
"""
from __future__ import annotations

import re

from ..errors import ModelFileError
from .config import Rwkv6Config

CONFIG = Rwkv6Config
EMBEDDINGS, HEAD = "rwkv.embeddings.weight", "head.weight"

MIXES = ("w", "k", "v", "r", "g")   # the order of time_maa_w1's ranks and time_maa_w2's rows
_ATT = ("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g", "time_maa_w1",
        "time_maa_w2", "time_decay", "time_decay_w1", "time_decay_w2", "time_faaaa", "receptance.weight",
        "key.weight", "value.weight", "gate.weight", "output.weight", "ln_x.weight", "ln_x.bias")
_FFN = ("time_maa_k", "time_maa_r", "key.weight", "receptance.weight", "value.weight")
_LORA = (".time_maa_w1", ".time_decay_w1", ".time_decay_w2", ".time_faaaa")  # 2-D, not (out, in) matrices


def expected_shapes(config: Rwkv6Config, head: bool = True) -> dict[str, tuple[int, ...]]:
    """{HF name: shape} of every tensor a model with this config has (head.weight only if head)."""
    V, C, F, H, N = (config.vocab_size, config.hidden_size, config.intermediate_size,
                     config.num_heads, config.head_size)
    D_mix, D_decay = config.time_mix_extra_dim, config.time_decay_extra_dim
    shapes = {EMBEDDINGS: (V, C), "rwkv.blocks.0.pre_ln.weight": (C,), "rwkv.blocks.0.pre_ln.bias": (C,)}
    for i in range(config.num_hidden_layers):
        blk, att = f"rwkv.blocks.{i}", f"rwkv.blocks.{i}.attention."
        for ln in ("ln1", "ln2", "attention.ln_x"):
            shapes[f"{blk}.{ln}.weight"] = shapes[f"{blk}.{ln}.bias"] = (C,)
        for m in ("x",) + MIXES:
            shapes[att + "time_maa_" + m] = (1, 1, C)
        shapes[att + "time_maa_w1"], shapes[att + "time_maa_w2"] = (C, 5 * D_mix), (5, D_mix, C)
        shapes[att + "time_decay"] = (1, 1, C)
        shapes[att + "time_decay_w1"], shapes[att + "time_decay_w2"] = (C, D_decay), (D_decay, C)
        shapes[att + "time_faaaa"] = (H, N)
        for p in ("receptance", "key", "value", "gate", "output"):
            shapes[att + p + ".weight"] = (C, C)
        shapes[f"{blk}.feed_forward.time_maa_k"] = shapes[f"{blk}.feed_forward.time_maa_r"] = (1, 1, C)
        shapes[f"{blk}.feed_forward.key.weight"] = (F, C)
        shapes[f"{blk}.feed_forward.receptance.weight"] = (C, C)
        shapes[f"{blk}.feed_forward.value.weight"] = (C, F)
    shapes["rwkv.ln_out.weight"] = shapes["rwkv.ln_out.bias"] = (C,)
    if head:
        shapes[HEAD] = (V, C)
    return shapes


def matrices(config: Rwkv6Config) -> set[str]:
    """The weight matrices (out, in) that go through a weight storage (storage.storage_of: the
    projections, FFN, embeddings and head). The LoRA matrices (in BlinkDL's (in, out) orientation,
    about 3% of a layer's weights at C = 768) and time_faaaa (H, N) stay float."""
    return {n for n, shape in expected_shapes(config).items() if len(shape) == 2 and not n.endswith(_LORA)}


def hf_name(name: str) -> str:
    """BlinkDL name (.pth, rwkv.cpp) -> HF name; ModelFileError for a name RWKV-6 does not have."""
    top = {"emb.weight": EMBEDDINGS, "ln_out.weight": "rwkv.ln_out.weight", "ln_out.bias": "rwkv.ln_out.bias",
           "head.weight": HEAD}
    if name in top:
        return top[name]
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", name)
    part, rest = (m.group(2), m.group(3)) if m else (None, None)
    if not (part in ("ln0", "ln1", "ln2") and rest in ("weight", "bias")
            or part == "att" and rest in _ATT or part == "ffn" and rest in _FFN):
        raise ModelFileError(f"{name}: not an RWKV-6 tensor name rwkv_np knows")
    part = {"ln0": "pre_ln", "att": "attention", "ffn": "feed_forward"}.get(part, part)
    return f"rwkv.blocks.{m.group(1)}.{part}.{rest}"


def from_blinkdl(tensors: dict) -> dict:
    """A BlinkDL `.pth` state dict -> HF names (values and shapes unchanged)."""
    return {hf_name(name): x for name, x in tensors.items()}


def from_hf(tensors: dict) -> dict:
    """HF names as found in a file -> Rwkv6ForCausalLM's: a bare Rwkv6Model's keys lack `rwkv.`."""
    return {n if n.startswith(("rwkv.", "head.weight")) else "rwkv." + n: x for n, x in tensors.items()}


def from_rwkvcpp(header: dict, tensors: dict, source: str = "rwkv.cpp file") -> tuple[Rwkv6Config, dict]:
    """An rwkv.cpp file's header and BlinkDL-named tensors -> (config, HF-named tensors): the mixes
    and time_decay back to (1, 1, C), time_faaaa to (H, N), the LoRA matrices transposed back
    (views). Nothing in a v6 `.bin` is exponentiated. Quantized LoRA matrices arrive dequantized."""
    out = {}
    for name, x in tensors.items():
        hf = hf_name(name)
        if hf.endswith(("time_maa_x", "time_maa_w", "time_maa_k", "time_maa_v", "time_maa_r", "time_maa_g",
                        "time_decay")):
            x = x.reshape(1, 1, -1)                    # a wrong size is reported by the shape check
        elif hf.endswith("time_faaaa") and x.ndim == 3 and x.shape[2] == 1:
            x = x[:, :, 0]
        elif hf.endswith(("time_maa_w1", "time_decay_w1", "time_decay_w2")) and x.ndim == 2:
            x = x.T
        elif hf.endswith("time_maa_w2") and x.ndim == 3:
            x = x.transpose(0, 2, 1)
        out[hf] = x
    config = infer_config(out, source)
    config.extra["rwkvcpp_version"] = header["version"]
    found = (config.vocab_size, config.hidden_size, config.num_hidden_layers)
    if found != (header["n_vocab"], header["n_embed"], header["n_layer"]):
        raise ModelFileError(f"{source}: the header says n_vocab, n_embed, n_layer = {header['n_vocab']}, "
                             f"{header['n_embed']}, {header['n_layer']}; the tensors have {found}")
    return config, out


def infer_config(tensors: dict, source: str = "tensors") -> Rwkv6Config:
    """The config implied by HF-named tensor shapes: H, N from time_faaaa, D_mix and D_decay from
    the LoRA matrices, F from feed_forward.key; defaults otherwise."""
    def shape(name):
        if name not in tensors:
            raise ModelFileError(f"{source}: cannot infer the model's sizes (missing tensor {name})")
        return tensors[name].shape

    V, C = shape(EMBEDDINGS)
    L = 0
    while f"rwkv.blocks.{L}.ln1.weight" in tensors:
        L += 1
    att = "rwkv.blocks.0.attention."
    H, N = shape(att + "time_faaaa")
    mix_ranks = shape(att + "time_maa_w1")[1]
    if mix_ranks % 5:
        raise ModelFileError(f"{source}: {att}time_maa_w1 has {mix_ranks} columns, not 5 LoRA ranks (w, k, v, r, g)")
    try:
        return Rwkv6Config(vocab_size=int(V), hidden_size=int(C), num_hidden_layers=L, head_size=int(N),
                           intermediate_size=int(shape("rwkv.blocks.0.feed_forward.key.weight")[0]),
                           time_mix_extra_dim=int(mix_ranks // 5),
                           time_decay_extra_dim=int(shape(att + "time_decay_w1")[1]))
    except ValueError as e:
        raise ModelFileError(f"{source}: the tensor shapes describe an impossible model ({e})") from None
