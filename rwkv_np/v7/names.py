"""RWKV-7 tensor names: fla's Hugging Face layout is rwkv_np's, and one explicit map per foreign format.

The HF layout (flash-linear-attention's RWKV7ForCausalLM, `utils/convert_from_rwkv7.py`), per
layer i, matrices (out, in) so that y = x @ W.T:

    model.embeddings.weight (V, C)        model.layers.0.pre_norm.{weight,bias} (C)   (layer 0 only)
    model.layers.i.attn_norm / ffn_norm.{weight,bias} (C)
    model.layers.i.attn.x_r, x_w, x_k, x_v, x_a, x_g (1, 1, C)      token-shift mixes
    model.layers.i.attn.{r,k,v,o}_proj.weight (C, C)
    model.layers.i.attn.{w,a,v,g}_lora.lora.0.weight (D, C)         x -> rank D
    model.layers.i.attn.{w,a,v,g}_lora.lora.2.weight (C, D)         rank D -> C
    model.layers.i.attn.{w,a,v}_lora.lora.2.bias (C)                (g_lora has none; no v_lora in layer 0)
    model.layers.i.attn.k_k, k_a (C)    attn.r_k (H, N)    attn.g_norm.{weight,bias} (C)
    model.layers.i.ffn.x_k (C)    ffn.key.weight (F, C)    ffn.value.weight (C, F)
    model.norm.{weight,bias} (C)    lm_head.weight (V, C)

BlinkDL's `.pth` (RWKV-LM `RWKV_Tmix_x070`) names the same tensors emb / blocks.i.ln0, ln1, ln2 /
att.* / ffn.* / ln_out / head; its LoRA matrices are (C, D) and (D, C), the transposes of fla's,
its biases w0, a0, v0 and k_k, k_a, ffn.x_k are (1, 1, C). rwkv.cpp's `.bin` stores the six mixes
as one (6, 1, C) `att.x_rwkvag` (rows r, w, k, v, a, g) and its LoRA matrices transposed relative
to the `.pth` (so in fla's orientation); nothing is exponentiated.
"""
from __future__ import annotations

import re

from ..errors import ModelFileError
from .config import MODEL_TYPE, Rwkv7Config  # noqa: F401  (re-exported: names.MODEL_TYPE, names.Rwkv7Config)

CONFIG = Rwkv7Config
EMBEDDINGS, HEAD = "model.embeddings.weight", "lm_head.weight"

MIXES = ("r", "w", "k", "v", "a", "g")          # the order of att.x_rwkvag's rows
LORAS = ("w", "a", "v", "g")                     # decay, learning rate, value residual, gate
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_PART = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm", "att": "attn", "ffn": "ffn"}
_ATT = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
_FLAT = ("attn.k_k", "attn.k_a", "ffn.x_k")      # (1, 1, C) in BlinkDL's files, (C,) in fla's


def expected_shapes(config: Rwkv7Config, head: bool = True) -> dict[str, tuple[int, ...]]:
    """{HF name: shape} of every tensor a model with this config has (lm_head only if head)."""
    V, C, F = config.vocab_size, config.hidden_size, config.intermediate_size
    H, N = config.num_heads, config.head_dim
    rank = {"w": config.decay_low_rank_dim, "a": config.a_low_rank_dim,
            "v": config.v_low_rank_dim, "g": config.gate_low_rank_dim}
    shapes = {"model.embeddings.weight": (V, C)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        norms = ("pre_norm", "attn_norm", "ffn_norm") if i == 0 else ("attn_norm", "ffn_norm")
        for norm in norms + ("attn.g_norm",):
            shapes[p + norm + ".weight"] = shapes[p + norm + ".bias"] = (C,)
        for m in MIXES:
            shapes[f"{p}attn.x_{m}"] = (1, 1, C)
        shapes[p + "attn.k_k"] = shapes[p + "attn.k_a"] = (C,)
        shapes[p + "attn.r_k"] = (H, N)
        for proj in ("r_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}attn.{proj}.weight"] = (C, C)
        for lora in LORAS:
            if lora == "v" and i == 0:
                continue                      # layer 0's v is v_first itself: no residual mix
            shapes[f"{p}attn.{lora}_lora.lora.0.weight"] = (rank[lora], C)
            shapes[f"{p}attn.{lora}_lora.lora.2.weight"] = (C, rank[lora])
            if lora != "g":
                shapes[f"{p}attn.{lora}_lora.lora.2.bias"] = (C,)
        shapes[p + "ffn.x_k"] = (C,)
        shapes[p + "ffn.key.weight"] = (F, C)
        shapes[p + "ffn.value.weight"] = (C, F)
    shapes["model.norm.weight"] = shapes["model.norm.bias"] = (C,)
    if head:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def matrices(config: Rwkv7Config) -> set[str]:
    """The weight matrices (out, in) that go through a weight storage (storage.storage_of: the
    projections, LoRAs, FFN, embeddings and head); attn.r_k (H, N) is a per-head vector, kept float."""
    return {n for n, shape in expected_shapes(config).items() if len(shape) == 2 and not n.endswith(".attn.r_k")}


def _hf_name(name: str) -> tuple[str | None, bool]:
    """BlinkDL name -> (HF name or None to drop, whether the matrix is transposed on the way)."""
    if name in _TOP:
        return _TOP[name], False
    m = re.fullmatch(r"blocks\.(\d+)\.(ln0|ln1|ln2|att|ffn)\.(.+)", name)
    if not m:
        raise ModelFileError(f"{name}: not an RWKV-7 tensor name rwkv_np knows")
    i, part, rest = m.groups()
    lora = re.fullmatch(r"([wavg])([012])", rest) if part == "att" else None
    if lora:
        kind, num = lora.groups()
        if kind == "v" and i == "0":
            return None, False                # present in .pth, never used (v_first is layer 0's v)
        if kind == "g" and num == "0":
            raise ModelFileError(f"{name}: the gate LoRA has no bias in RWKV-7")
        return f"model.layers.{i}.attn.{kind}_lora.lora." + {"1": "0.weight", "2": "2.weight",
                                                              "0": "2.bias"}[num], num != "0"
    if part == "att":
        head, dot, tail = rest.partition(".")
        rest = _ATT.get(head, head) + dot + tail
    if part == "ffn" and rest.split(".")[0] not in ("x_k", "key", "value"):
        raise ModelFileError(f"{name}: not an RWKV-7 tensor name rwkv_np knows "
                             "(DeepEmbed checkpoints, with ffn.s_emb, are not supported)")
    return f"model.layers.{i}.{_PART[part]}.{rest}", False


def from_blinkdl(tensors: dict) -> dict:
    """BlinkDL `.pth` names and shapes -> fla's HF layout. Transposes are views; dtypes are kept."""
    out = {}
    for name, x in tensors.items():
        hf, transpose = _hf_name(name)
        if hf is None:
            continue
        if transpose:
            x = x.T
        elif hf.endswith(".lora.2.bias") or hf.endswith(_FLAT):
            x = x.reshape(-1)                 # (1, 1, C) -> (C,)
        out[hf] = x
    return out


def from_hf(tensors: dict) -> dict:
    """HF names as found in a file -> RWKV7ForCausalLM's: a bare RWKV7Model's keys lack `model.`."""
    return {n if n.startswith(("model.", "lm_head.")) else "model." + n: x for n, x in tensors.items()}


def _bin_to_pth(tensors: dict, source: str) -> dict:
    """rwkv.cpp's `.bin` tensors -> the `.pth` they were converted from: the six mixes split out of
    `att.x_rwkvag` (rows r, w, k, v, a, g), the LoRA matrices w1 .. g2 transposed back."""
    pth = {}
    for name, x in tensors.items():
        if name.endswith(".att.x_rwkvag"):
            if x.ndim != 3 or x.shape[:2] != (len(MIXES), 1):
                raise ModelFileError(f"{source}: {name} has shape {x.shape}, expected (6, 1, C)")
            for j, m in enumerate(MIXES):
                pth[name[: -len("rwkvag")] + m] = x[j:j + 1]
        elif re.search(r"\.att\.[wavg][12]$", name):
            pth[name] = x.T
        else:
            pth[name] = x
    return pth


def from_rwkvcpp(header: dict, tensors: dict, source: str = "rwkv.cpp file") -> tuple[Rwkv7Config, dict]:
    """An rwkv.cpp file's header and tensors (BlinkDL names, NumPy dimension order, as
    formats.rwkvcpp.read_records gives them) -> (config, HF-named tensors). Nothing in a v7 `.bin`
    is exponentiated; only the layout differs from the `.pth` (`_bin_to_pth`)."""
    hf = from_blinkdl(_bin_to_pth(tensors, source))
    config = infer_config(hf, source)
    config.extra["rwkvcpp_version"] = header["version"]
    found = (config.vocab_size, config.hidden_size, config.num_hidden_layers)
    if found != (header["n_vocab"], header["n_embed"], header["n_layer"]):
        raise ModelFileError(f"{source}: the header says n_vocab, n_embed, n_layer = {header['n_vocab']}, "
                             f"{header['n_embed']}, {header['n_layer']}; the tensors have {found}")
    return config, hf


def infer_config(tensors: dict, source: str = "tensors") -> Rwkv7Config:
    """The config implied by HF-named tensor shapes: H, N from attn.r_k, the LoRA ranks from the
    lora.0 matrices (D_v from layer 1: layer 0 has none), F from ffn.key; defaults otherwise."""
    def shape(name):
        if name not in tensors:
            raise ModelFileError(f"{source}: cannot infer the model's sizes (missing tensor {name})")
        return tensors[name].shape

    V, C = shape(EMBEDDINGS)
    L = 0
    while f"model.layers.{L}.attn_norm.weight" in tensors:
        L += 1
    H, N = shape("model.layers.0.attn.r_k")
    lora = lambda kind, i=0: shape(f"model.layers.{i}.attn.{kind}_lora.lora.0.weight")[0]  # noqa: E731
    found = dict(vocab_size=V, hidden_size=C, num_hidden_layers=L, num_heads=H, head_dim=N,
                 intermediate_size=shape("model.layers.0.ffn.key.weight")[0],
                 decay_low_rank_dim=lora("w"), a_low_rank_dim=lora("a"), gate_low_rank_dim=lora("g"))
    if L > 1:
        found["v_low_rank_dim"] = lora("v", 1)
    try:
        return Rwkv7Config(**{k: int(v) for k, v in found.items()})
    except ValueError as e:
        raise ModelFileError(f"{source}: the tensor shapes describe an impossible model ({e})") from None


def detect(names) -> bool:
    """True if tensor names (BlinkDL, rwkv.cpp or HF) are RWKV-7's: only v7 has r_k / x_rwkvag."""
    return any(n.endswith(("att.r_k", "attn.r_k")) or n.endswith("att.x_rwkvag") for n in names)
