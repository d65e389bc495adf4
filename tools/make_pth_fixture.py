"""Write tiny BlinkDL-format .pth checkpoints (torch.save of a state dict with BlinkDL's names)
under tests/fixtures/pth/, so that rwkv_np's torch-free .pth reader is tested without torch.

Each is made from an HF fixture under tests/fixtures/hf/ (whose expected.safetensors holds
transformers' logits for its input_ids): the weights are read with torch from model.safetensors,
renamed HF -> BlinkDL (`rwkv.embeddings.` -> `emb.`, `pre_ln` -> `ln0`, `.attention.` -> `.att.`,
`.feed_forward.` -> `.ffn.`, `time_mix_key/value/receptance` -> `time_mix_k/v/r`) with values
and dtypes unchanged, and saved with torch.save as BlinkDL's training code does:
    tiny.pth   from hf/tiny  (float32)
    bf16.pth   from hf/bf16  (bfloat16, the dtype of BlinkDL's released RWKV-4 checkpoints)
One tensor in tiny.pth is saved as a transposed view's contiguous copy's transpose, i.e. with
non-standard strides, so the reader's stride handling is exercised.

Run from the repo root:  python tools/make_pth_fixture.py   (needs torch and safetensors)
"""
from __future__ import annotations

import collections
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SOURCES = {"tiny": "tiny", "bf16": "bf16"}
STRIDED = "blocks.0.att.key.weight"  # saved with column-major strides in tiny.pth


def blinkdl_name(hf: str) -> str:
    name = hf.removeprefix("rwkv.")
    name = (name.replace("embeddings.", "emb.", 1).replace(".pre_ln.", ".ln0.")
            .replace(".attention.", ".att.").replace(".feed_forward.", ".ffn."))
    for short, long in (("k", "key"), ("v", "value"), ("r", "receptance")):
        if name.endswith(f".time_mix_{long}"):
            name = name[:-len(long)] + short
    return name


def main() -> None:
    out_dir = REPO / "tests" / "fixtures" / "pth"
    out_dir.mkdir(parents=True, exist_ok=True)
    for out_name, fixture in SOURCES.items():
        hf = load_file(REPO / "tests" / "fixtures" / "hf" / fixture / "model.safetensors")
        state = collections.OrderedDict()
        for name in sorted(hf):
            x = hf[name].clone()
            if out_name == "tiny" and blinkdl_name(name) == STRIDED:
                x = x.t().contiguous().t()  # same values, strides (1, rows)
            state[blinkdl_name(name)] = x
        torch.save(state, out_dir / f"{out_name}.pth")
        print(f"wrote {out_dir / f'{out_name}.pth'}: {len(state)} tensors from hf/{fixture}")


if __name__ == "__main__":
    main()
