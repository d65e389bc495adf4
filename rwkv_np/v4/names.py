"""RWKV-4 tensor names: HF transformers' RwkvForCausalLM layout is rwkv_np's, and one explicit
map per foreign format.

HF layout (H hidden, A attention_hidden_size, I intermediate_size, V vocab), per block i,
matrices (out, in) so that y = x @ W.T:

    rwkv.embeddings.weight (V, H)          rwkv.blocks.0.pre_ln.{weight,bias} (H)   (block 0 only)
    rwkv.blocks.i.ln1 / ln2.{weight,bias} (H)
    rwkv.blocks.i.attention.time_decay, time_first (A)           raw: w = -exp(time_decay)
    rwkv.blocks.i.attention.time_mix_{key,value,receptance} (1, 1, H)
    rwkv.blocks.i.attention.{key,value,receptance}.weight (A, H)    attention.output.weight (H, A)
    rwkv.blocks.i.feed_forward.time_mix_{key,receptance} (1, 1, H)
    rwkv.blocks.i.feed_forward.key.weight (I, H)   receptance.weight (H, H)   value.weight (H, I)
    rwkv.ln_out.{weight,bias} (H)          head.weight (V, H)

BlinkDL's `.pth` names the same tensors emb / blocks.i.ln0, ln1, ln2 / att.* / ffn.* / ln_out /
head with time_mix_{k,v,r}, same values and shapes. rwkv.cpp's `.bin` uses BlinkDL's names but
stores time_decay as -exp(time_decay) and the time_mix / time_first vectors flat (H,).
"""
from __future__ import annotations

import re

import numpy as np

from ..errors import ModelFileError
from .config import RwkvConfig

CONFIG = RwkvConfig
EMBEDDINGS, HEAD = "rwkv.embeddings.weight", "head.weight"


def expected_shapes(config: RwkvConfig, head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of an RwkvForCausalLM checkpoint (HF names) and its shape."""
    V, H, A, I = (config.vocab_size, config.hidden_size,
                  config.attention_hidden_size, config.intermediate_size)
    shapes = {"rwkv.embeddings.weight": (V, H),
              "rwkv.blocks.0.pre_ln.weight": (H,), "rwkv.blocks.0.pre_ln.bias": (H,)}
    for i in range(config.num_hidden_layers):
        blk = f"rwkv.blocks.{i}"
        for ln in ("ln1", "ln2"):
            shapes[f"{blk}.{ln}.weight"] = shapes[f"{blk}.{ln}.bias"] = (H,)
        shapes[f"{blk}.attention.time_decay"] = shapes[f"{blk}.attention.time_first"] = (A,)
        for mix in ("key", "value", "receptance"):
            shapes[f"{blk}.attention.time_mix_{mix}"] = (1, 1, H)
            shapes[f"{blk}.attention.{mix}.weight"] = (A, H)
        shapes[f"{blk}.attention.output.weight"] = (H, A)
        shapes[f"{blk}.feed_forward.time_mix_key"] = (1, 1, H)
        shapes[f"{blk}.feed_forward.time_mix_receptance"] = (1, 1, H)
        shapes[f"{blk}.feed_forward.key.weight"] = (I, H)
        shapes[f"{blk}.feed_forward.receptance.weight"] = (H, H)
        shapes[f"{blk}.feed_forward.value.weight"] = (H, I)
    shapes["rwkv.ln_out.weight"] = shapes["rwkv.ln_out.bias"] = (H,)
    if head:
        shapes["head.weight"] = (V, H)
    return shapes


def matrices(config: RwkvConfig) -> set[str]:
    """The weight matrices (out, in) that go through a weight storage (storage.storage_of): every
    2-D tensor (projections, embeddings, head)."""
    return {n for n, shape in expected_shapes(config).items() if len(shape) == 2}


def hf_name(blinkdl: str) -> str:
    """BlinkDL checkpoint name (.pth, rwkv.cpp) -> HF RwkvForCausalLM name; values are unchanged."""
    name = (blinkdl.replace("emb.", "embeddings.", 1).replace(".ln0.", ".pre_ln.")
            .replace(".att.", ".attention.").replace(".ffn.", ".feed_forward."))
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if name.endswith(f".time_mix_{short}"):
            name = name[:-len(short)] + long
    return name if name == "head.weight" else "rwkv." + name


def from_blinkdl(tensors: dict) -> dict:
    """A BlinkDL `.pth` state dict -> HF names (values and shapes are the same)."""
    return {hf_name(name): x for name, x in tensors.items()}


def from_hf(tensors: dict) -> dict:
    """HF names as found in a file -> RwkvForCausalLM's: a bare RwkvModel's keys lack `rwkv.`."""
    return {n if n.startswith(("rwkv.", "head.weight")) else "rwkv." + n: x  # (head.weight_scale too)
            for n, x in tensors.items()}


def from_rwkvcpp(header: dict, tensors: dict, source: str) -> tuple[RwkvConfig, dict]:
    """An rwkv.cpp file's header and BlinkDL-named tensors -> (config, HF-named tensors): the
    time_mix vectors back to (1, 1, H), time_decay back from -exp(decay) to the raw decay."""
    tensors = from_blinkdl(tensors)
    for key in list(tensors):
        if "time_mix" in key:
            tensors[key] = tensors[key].reshape(1, 1, -1)  # a wrong size is reported by the shape check
        elif key.endswith("time_decay"):
            if not np.all(tensors[key] < 0):
                raise ModelFileError(f"{source}: {key} holds values that are not < 0; rwkv.cpp stores "
                                     "time_decay as -exp(decay)")
            tensors[key] = np.log(-tensors[key].astype(np.float64)).astype(np.float32)
    ffn = tensors.get("rwkv.blocks.0.feed_forward.key.weight")
    try:
        config = RwkvConfig(vocab_size=header["n_vocab"], hidden_size=header["n_embed"],
                            num_hidden_layers=header["n_layer"],
                            intermediate_size=ffn.shape[0] if ffn is not None else None,
                            context_length=1024, rescale_every=0,
                            extra={"rwkvcpp_version": header["version"]})
    except ValueError as e:
        raise ModelFileError(f"{source}: header describes an impossible model ({e})") from None
    return config, tensors


def infer_config(tensors: dict, source: str) -> RwkvConfig:
    """The config a checkpoint without config.json implies: sizes from HF-named tensor shapes,
    HF's defaults otherwise (as HF's own conversion script does, so rescale_every is 6)."""
    try:
        V, H = tensors["rwkv.embeddings.weight"].shape
        layers = {int(m.group(1)) for n in tensors if (m := re.match(r"rwkv\.blocks\.(\d+)\.", n))}
        return RwkvConfig(vocab_size=int(V), hidden_size=int(H), num_hidden_layers=max(layers) + 1,
                          attention_hidden_size=int(tensors["rwkv.blocks.0.attention.key.weight"].shape[0]),
                          intermediate_size=int(tensors["rwkv.blocks.0.feed_forward.key.weight"].shape[0]))
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{source}: cannot infer the model's sizes (missing or odd tensor: {e})") from None
