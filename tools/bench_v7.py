"""The RWKV-7 parts of tools/bench.py: a random model of a published v7 shape, and BlinkDL's
`rwkv` package (class RWKV_x070, strategy "cpu fp32") as the peer on the same weights.

    python tools/bench.py model --shape v7-0.1b --peers --prefill 256 --rounds 3 --steps 16

The weights are drawn with BlinkDL's names in the ranges tools/make_v7_fixtures.py uses (its
`draw`), written as an HF-style directory (rwkv_np.convert.save_pretrained, float32) for rwkv_np
and, from that directory, as a BlinkDL `.pth` (torch.save, float32) for the package: the same
numbers on both sides. HF transformers has no RWKV-7 (fla's is GPU Triton), so the package is the
only peer. It must see RWKV_V7_ON=1 before `rwkv.model` is imported (RWKV_x070 is defined then).
"""
from __future__ import annotations

import json
import os
import time

import numpy as np

# name: (L, C, H, N, V, F, (D_w, D_a, D_v, D_g)); RWKV567_SPEC.md 4.1: C 768 -> ranks 64/64/32/128
V7_SHAPES = {"v7-0.1b": (12, 768, 12, 64, 65536, 3072, (64, 64, 32, 128))}
PACKAGE_ENV = {"RWKV_V7_ON": "1", "RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0"}


def is_v7(directory) -> bool:
    """True for an HF-style directory whose config.json says model_type rwkv7."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("model_type") == "rwkv7"
    except (OSError, ValueError):
        return False


def random_v7_dir(shape: str, directory: str) -> None:
    """Write an HF-layout RWKV-7 model of a published shape with random float32 weights."""
    from make_v7_fixtures import Fixture, draw

    from rwkv_np.convert import save_pretrained
    from rwkv_np.v7 import names
    L, _, H, N, V, F, ranks = V7_SHAPES[shape]
    fx = Fixture(shape, 0, heads=H, head_size=N, layers=L, vocab=V, ffn=F, ranks=ranks, disk_dtype="float32")
    blink = {k: v.astype(np.float32) for k, v in draw(fx, np.random.default_rng(0)).items()}
    tensors = {k: np.ascontiguousarray(v) for k, v in names.from_blinkdl(blink).items()}
    save_pretrained(directory, names.infer_config(tensors), tensors)


def blinkdl_names(config) -> list[str]:
    """Every tensor name of a BlinkDL RWKV-7 `.pth` for `config` (layer 0 without v0/v1/v2)."""
    out = ["emb.weight", "blocks.0.ln0.weight", "blocks.0.ln0.bias"]
    for i in range(config.num_hidden_layers):
        b = f"blocks.{i}."
        out += [b + f"ln{j}.{p}" for j in (1, 2) for p in ("weight", "bias")]
        att = [f"x_{m}" for m in "rwkvag"] + [f"{k}{j}" for k in "wavg" for j in "012"
                                               if not (k == "g" and j == "0") and not (k == "v" and i == 0)]
        att += ["k_k", "k_a", "r_k", "ln_x.weight", "ln_x.bias"]
        att += [f"{p}.weight" for p in ("receptance", "key", "value", "output")]
        out += [b + "att." + n for n in att] + [b + "ffn." + n for n in ("x_k", "key.weight", "value.weight")]
    return out + ["ln_out.weight", "ln_out.bias", "head.weight"]


def write_v7_pth(directory) -> str:
    """BlinkDL-named float32 copy of a v7 HF dir as model.pth; returns its path without ".pth"
    (RWKV_x070 appends it). The inverse of names.from_blinkdl, name by name."""
    path = os.path.join(directory, "model.pth")
    if not os.path.exists(path):
        import torch

        from rwkv_np.load import read
        from rwkv_np.storage import as_float
        from rwkv_np.v7 import names
        _, config, tensors = read(directory)
        blink = {}
        for name in blinkdl_names(config):
            hf, transpose = names._hf_name(name)
            x = as_float(tensors[hf], np.float32)
            blink[name] = torch.from_numpy(np.array(x.T if transpose else x, order="C"))  # a writable copy
        torch.save(blink, path)
    return path[:-len(".pth")]


def set_package_env() -> None:
    for key, value in PACKAGE_ENV.items():
        os.environ[key] = value


class BlinkDL7:
    """BlinkDL's `rwkv` package, RWKV_x070 with strategy 'cpu fp32', from model.pth beside the dir."""
    def __init__(self, directory, storage="float32"):
        set_package_env()
        from rwkv.model import RWKV_x070
        self.name = "BlinkDL rwkv cpu fp32"
        self.model = RWKV_x070(write_v7_pth(directory), "cpu fp32")

    def prefill(self, ids):  # sequence mode; logits of the last position only
        self.model.forward([int(i) for i in ids], None)

    def decode(self, ids, B, steps):  # one-token mode (an int id), B = 1
        _, state = self.model.forward([int(i) for i in ids], None)
        t = time.perf_counter()
        for _ in range(steps):
            _, state = self.model.forward(int(ids[-1]), state)
        return time.perf_counter() - t


def v7_matrices(model) -> list:
    """The matrices an rwkv_np RWKV-7 model multiplies by per token (layers, then the head)."""
    mats = []
    for lay in model.layers:
        mats += [lay.r_proj, lay.k_proj, lay.v_proj, lay.o_proj, lay.ffn_key, lay.ffn_value]
        mats += [m for lora in (lay.w_lora, lay.a_lora, lay.g_lora, lay.v_lora) if lora for m in lora[:2]]
    return mats + [model.head]
