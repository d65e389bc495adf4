"""RWKV-5.1, 5.2 and 6 against BlinkDL's `rwkv` pip package (class RWKV), which computes them
independently of rwkv_np (PyTorch, float32, ln_x eps 64e-5).

1. Committed fixtures (tests/fixtures/v5, v6; tools/make_v56_fixtures.py, README beside them):
   random float16 / bfloat16 `.pth` models with 2 or 4 heads and 3 layers, and the package's
   logits and states. rwkv_np's float64 reference and its fast model (float32 and float64) must
   be within 1e-5 of each tensor's scale (its largest |value|): the logits of every prompt
   position, the state after the prompt in the package's own layout (state.to_rwkv_pip), the
   logits of five one-token steps from that state, and the state after them.
2. Live, when torch and the package are installed: a new random model of each kind, run by the
   package in a subprocess (its import-time switches cannot leak into other tests), a state made
   by rwkv_np continued by the package and the other way round.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rwkv_np.formats.safetensors import read_safetensors
from rwkv_np.load import load
from rwkv_np.v5 import reference as reference5, state as state5
from rwkv_np.v6 import reference as reference6

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = [("v5", "v5_2_h2n32", "5.2"), ("v5", "v5_1_h4n16", "5.1"), ("v6", "v6_h2n32", None)]
REFERENCE = {"v5": reference5, "v6": reference6}
BOUND = 1e-5          # of each tensor's largest |value|


def close(got, want, what):
    scale = float(np.max(np.abs(want)))
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    assert err <= BOUND * scale, f"{what}: max |Δ| {err:.3g} > {BOUND} x {scale:.3g}"
    return err / scale


def run(folder, name, forward):
    """Check forward(ids, state) -> (logits (T, V), rwkv_np state) against one fixture; returns the
    largest error relative to scale."""
    want, _ = read_safetensors(str(FIXTURES / folder / f"{name}.expected.safetensors"))
    L = sum(1 for k in want if k.startswith("prompt.state.")) // 3
    logits, state = forward(want["prompt.input_ids"], None)
    errs = [close(logits, want["prompt.logits_full"], "prompt.logits_full"),
            close(logits[-1], want["tokenwise.logits_last"], "tokenwise.logits_last")]
    pip = state5.to_rwkv_pip(state)
    errs += [close(pip[j], want[f"prompt.state.{j}"], f"prompt.state.{j}") for j in range(3 * L)]
    for t, token in enumerate(want["steps.input_ids"]):
        step, state = forward(np.array([token]), state)
        errs.append(close(step[0], want["steps.logits"][t], f"steps.logits[{t}]"))
    pip = state5.to_rwkv_pip(state)
    errs += [close(pip[j], want[f"steps.state.{j}"], f"steps.state.{j}") for j in range(3 * L)]
    return max(errs)


def fixture_model(folder, name):
    pth = FIXTURES / folder / f"{name}.pth"
    if not pth.exists():
        pytest.skip(f"{pth} is absent")
    return load(pth)


@pytest.mark.parametrize("folder, name, variant", CASES)
def test_reference_matches_the_package_fixtures(folder, name, variant):
    """Measured worst error / scale over all tensors: v5_2 7.7e-7, v5_1 1.4e-6, v6 7.9e-7."""
    gen, config, tensors = fixture_model(folder, name)
    assert gen.name == folder and getattr(config, "variant", None) == variant
    assert config.group_norm_eps == 64e-5                     # BlinkDL's, as the package runs it
    from rwkv_np.storage import as_float
    params = {k: as_float(v, np.float64) for k, v in tensors.items()}
    forward = REFERENCE[folder].forward

    def step(ids, state):
        out = forward(params, config, ids[None], state)
        return out["logits"][0], out["state"]
    run(folder, name, step)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("folder, name, variant", CASES)
def test_fast_model_matches_the_package_fixtures(folder, name, variant, dtype):
    """The fast model straight from the bfloat16 / float16 file. Measured worst error / scale:
    float32 6.3e-7 / 1.9e-6 / 9.0e-7 (v5_2 / v5_1 / v6), float64 as the reference."""
    from rwkv_np.generations import detect
    gen, config, tensors = fixture_model(folder, name)
    model = detect(tensors, name).module("model").CAUSAL_LM(config, tensors, dtype)

    def step(ids, state):
        out = model(ids[None], state=state)
        return out.logits[0], out.state
    run(folder, name, step)


PACKAGE = """
import os, sys, json
os.environ.update(RWKV_V7_ON="0", RWKV_JIT_ON="1", RWKV_CUDA_ON="0")
import numpy as np, torch
from rwkv.model import RWKV
torch.set_num_threads(1)
model = RWKV(model=sys.argv[1], strategy="cpu fp32", verbose=False)
ids = json.loads(sys.argv[2])
state_in = [torch.from_numpy(a) for a in np.load(sys.argv[3]).values()] if sys.argv[3] != "-" else None
logits, state = model.forward(ids, state_in, full_output=True)
np.save(sys.argv[4], logits.numpy())
np.savez(sys.argv[5], *[s.numpy() for s in state])
"""


def package(tmp_path, model, ids, state=None):
    """The package's (logits (T, V), state list of 3L arrays) for ids from state (a pip-layout list)."""
    state_file = "-"
    if state is not None:
        state_file = str(tmp_path / "state_in.npz")
        np.savez(state_file, *[np.asarray(s, np.float32) for s in state])
    subprocess.run([sys.executable, "-c", PACKAGE, str(model), json.dumps([int(i) for i in ids]), state_file,
                    str(tmp_path / "logits.npy"), str(tmp_path / "state.npz")],
                   check=True, capture_output=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    out = np.load(tmp_path / "state.npz")
    return np.load(tmp_path / "logits.npy"), [out[f"arr_{i}"] for i in range(len(out.files))]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("rwkv") is None,
                    reason="needs torch and BlinkDL's rwkv package (pip install rwkv)")
@pytest.mark.parametrize("variant", ["5.2", "6.0"])
def test_live_against_the_package_with_states_both_ways(tmp_path, variant):
    """A new random float32 model (tools/make_v56_fixtures.py's draw, another seed and shape: 4
    heads of 8, 3 layers, V 300). rwkv_np's float32 model and the package: logits of a 9-token
    prompt, then 4 more tokens continued by the package from rwkv_np's state (converted with
    state.to_rwkv_pip) and by rwkv_np from the package's (state.from_rwkv_pip). Measured worst
    error / scale: 5.0e-7 (5.2), 7.6e-7 (6.0). Bound 1e-5 of each tensor's scale."""
    import torch
    sys.path.insert(0, str(FIXTURES.parents[1] / "tools"))
    from make_v56_fixtures import Fixture, draw

    from rwkv_np.v5.state import from_rwkv_pip, to_rwkv_pip
    fx = Fixture("live", "v6" if variant == "6.0" else "v5", variant, 7, heads=4, head_size=8, layers=3, vocab=300,
                 ffn=96, disk_dtype="float32", ranks=(8, 12))
    sd = draw(fx, np.random.default_rng(fx.seed))
    torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}, tmp_path / "m.pth")
    gen, config, tensors = load(tmp_path / "m.pth")
    model = gen.module("model").CAUSAL_LM(config, tensors, "float32")
    ids = np.random.default_rng(1).integers(0, 300, 13)
    theirs, their_state = package(tmp_path, tmp_path / "m", ids[:9])
    ours = model(ids[None, :9])
    close(ours.logits[0], theirs, "prompt logits")
    for got, want in zip(to_rwkv_pip(ours.state), their_state):
        close(got, want, "prompt state")
    theirs_cont, _ = package(tmp_path, tmp_path / "m", ids[9:], to_rwkv_pip(ours.state))   # ours -> package
    ours_cont = model(ids[None, 9:], state=from_rwkv_pip(their_state))                    # package -> ours
    close(ours_cont.logits[0], theirs_cont, "continued logits")
    close(model(ids[None]).logits[0, 9:], theirs_cont, "whole prompt vs continued")
