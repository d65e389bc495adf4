"""Write Hugging Face transformers' outputs for a golden bundle's prompts as a candidate bundle,
so that `rwkv-np compare GOLDEN CANDIDATE` judges transformers like any other engine.

For every prompt of GOLDEN/manifest.json (batch 1, float32, eval mode so rescale_every acts):
one forward with output_hidden_states/output_attentions gives blocks.{i}.output, ln_out,
blocks.{i}.attention, logits and the state; a forward hook on each block's feed_forward module
gives blocks.{i}.feed_forward; the greedy continuation is a token-by-token loop with the state
(HF's B=1 decode path). Tensor names and layout are the golden bundle's (rwkv_np/golden.py).

    python tools/hf_candidate.py GOLDEN MODEL_DIR --out CANDIDATE     (needs torch + transformers)
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file

NAMES = ("ffn_x", "att_x", "num", "den", "max")


def run_prompt(model, ids: list[int], new_tokens: int) -> dict[str, np.ndarray]:
    blocks = model.rwkv.blocks
    captured = {}
    hooks = [blk.feed_forward.register_forward_hook(
        lambda mod, inputs, output, i=i: captured.__setitem__(i, output[0].detach().clone()))
        for i, blk in enumerate(blocks)]
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True, output_hidden_states=True, output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    L = len(blocks)
    np_ = lambda t: np.ascontiguousarray(t.detach().float().numpy())
    t = {"logits": np_(out.logits[0]), "ln_out": np_(out.hidden_states[L][0]),
         "input_ids": np.asarray(ids, np.int64)}
    for i in range(L):
        t[f"blocks.{i}.attention"] = np_(out.attentions[i][0])
        t[f"blocks.{i}.feed_forward"] = np_(captured[i][0])
        t[f"blocks.{i}.output"] = np_(out.hidden_states[i][0])
    for name, s in zip(NAMES, out.state):
        t[f"state.{name}"] = np_(s[0])
    generated, logits, state = [], out.logits[0, -1], [s.clone() for s in out.state]
    with torch.no_grad():
        for k in range(new_tokens):
            generated.append(int(torch.argmax(logits)))
            if k + 1 < new_tokens:
                step = model(torch.tensor([[generated[-1]]]), state=state, use_cache=True)
                logits, state = step.logits[0, -1], step.state
    t["generated_ids"] = np.asarray(generated, np.int64)
    return t


def write_candidate(golden_dir, model_dir, out_dir) -> None:
    with open(os.path.join(golden_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    torch.set_num_threads(1)
    model = transformers.RwkvForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tensors = {}
    for info in manifest["prompts"]:
        for name, x in run_prompt(model, info["input_ids"], manifest["new_tokens"]).items():
            tensors[f"{info['name']}.{name}"] = x
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "candidate.safetensors"))
    with open(os.path.join(out_dir, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump({"engine": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                             "float32, CPU", "golden": os.path.abspath(golden_dir)}, f, indent=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("golden", help="golden bundle directory")
    p.add_argument("model", help="HF model directory (the one the golden was made from)")
    p.add_argument("--out", required=True, help="candidate bundle directory to write")
    args = p.parse_args()
    write_candidate(args.golden, args.model, args.out)


if __name__ == "__main__":
    main()
