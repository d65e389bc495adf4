"""`convert` writes HF directories that load back to the same model, and recurrent states move
between HF's layout, BlinkDL's `rwkv` package's and rwkv.cpp's without changing a bit.

References: rwkv.cpp's expected logits (../shared/data/rwkvcpp) for its converted models, and the
`rwkv` pip package itself (skipped when absent) continuing a state rwkv_np made.
"""
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURES
import rwkv_np
from rwkv_np import InputError, RwkvForCausalLM
from rwkv_np.convert import convert, load_checkpoint
from rwkv_np.v4.state import from_rwkv_pip, from_rwkvcpp, to_rwkv_pip, to_rwkvcpp
from rwkv_np.storage import as_float


def labelled_state(B=2, H=3, L=4):
    """Every value names its place: kind*1000 + batch*100 + layer*10 + channel."""
    kind, b, h, l = np.meshgrid(np.arange(5), np.arange(B), np.arange(H), np.arange(L), indexing="ij")
    values = (kind * 1000 + b * 100 + l * 10 + h).astype(np.float32)
    return [values[k] for k in range(5)]


def test_hf_to_rwkv_pip_to_hf_round_trips_exactly():
    rng = np.random.default_rng(0)
    state = [rng.normal(size=(1, 16, 3)).astype(np.float32) for _ in range(5)]
    state[4][:, :, 0] = -1e38  # a layer that has seen no token yet
    back = from_rwkv_pip(to_rwkv_pip(state))
    for a, b in zip(state, back):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_rwkv_pip_layout_is_att_x_num_den_max_ffn_x_per_layer():
    state = labelled_state()
    pip = to_rwkv_pip(state, index=1)
    assert len(pip) == 5 * 4 and pip[0].shape == (3,)
    for layer in range(4):
        for j, hf_kind in enumerate([1, 2, 3, 4, 0]):  # att_x, num (aa), den (bb), max (pp), ffn_x
            np.testing.assert_array_equal(pip[5 * layer + j], hf_kind * 1000 + 100 + layer * 10 + np.arange(3))


def test_rwkvcpp_layout_is_ffn_x_att_x_num_den_max_per_layer_and_round_trips():
    state = labelled_state()
    flat = to_rwkvcpp(state, index=1)
    assert flat.dtype == np.float32 and flat.shape == (5 * 4 * 3,)
    np.testing.assert_array_equal(flat[:6], [100, 101, 102, 1100, 1101, 1102])      # layer 0: ffn_x, att_x
    np.testing.assert_array_equal(flat[15:18], [110, 111, 112])                   # layer 1's ffn_x
    back = from_rwkvcpp(flat, n_layer=4)
    for a, b in zip(state, back):
        np.testing.assert_array_equal(a[1:2], b)


def test_bad_states_are_clear_errors():
    with pytest.raises(InputError, match="list of 5"):
        to_rwkv_pip([np.zeros((1, 2, 3))] * 4)
    with pytest.raises(InputError, match="index: 2 is outside the batch of 2"):
        to_rwkvcpp(labelled_state(), index=2)
    with pytest.raises(InputError, match="5\\*L arrays"):
        from_rwkv_pip([np.zeros(3)] * 7)
    with pytest.raises(InputError, match="61 values"):
        from_rwkvcpp(np.zeros(61), n_layer=4)


def test_state_made_by_rwkv_np_continues_in_the_rwkv_package(monkeypatch):
    """rwkv_np runs a prompt; BlinkDL's `rwkv` (cpu fp32) continues from the converted state and
    must give the logits rwkv_np gives for the whole sequence; and back: its state continues in rwkv_np."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("RWKV_JIT_ON", "1")
    monkeypatch.setenv("RWKV_CUDA_ON", "0")
    rwkv_model = pytest.importorskip("rwkv.model")
    pth = FIXTURES / "pth" / "tiny.pth"
    theirs = rwkv_model.RWKV(model=os.fspath(pth), strategy="cpu fp32", verbose=False)
    ours = RwkvForCausalLM(*load_checkpoint(pth))
    prompt, rest = [5, 17, 33, 2, 61], [9, 40, 12]
    full = ours([prompt + rest]).logits[0, -1]

    state = ours([prompt]).state
    pip_state = [torch.from_numpy(x) for x in to_rwkv_pip(state)]
    logits, pip_after = theirs.forward(rest, pip_state)
    assert np.abs(logits.numpy() - full).max() < 1e-4

    _, pip_prompt = theirs.forward(prompt, None)
    mine = ours([rest], state=from_rwkv_pip(pip_prompt)).logits[0, -1]
    assert np.abs(mine - full).max() < 1e-4
    for a, b in zip(from_rwkv_pip(pip_after), ours([prompt + rest]).state):
        assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("variant, tol", [("FP32", 1e-5), ("FP16", 2.5e-3), ("Q5_1", 0.12)])
def test_rwkvcpp_models_convert_to_hf_directories(shared_data, tmp_path, variant, tol):
    """Measured max|dlogit| vs rwkv.cpp's FP32 expected logits: FP32 1.2e-6, FP16 1.63e-3, Q5_1 0.0961."""
    src = shared_data / "rwkvcpp" / f"tiny-rwkv-4v0-660K-{variant}.bin"
    convert(src, tmp_path / "hf")
    model = RwkvForCausalLM.from_pretrained(tmp_path / "hf")
    assert model.config.rescale_every == 0 and model.config.vocab_size == 256
    expected = np.fromfile(shared_data / "rwkvcpp" / "expected-logits-4v0-660K.bin", "<f4")
    assert np.abs(model([[34, 105, 110]]).logits[0, -1] - expected).max() < tol


def test_convert_keeps_values_of_an_hf_directory(tmp_path):
    convert(FIXTURES / "hf" / "sharded", tmp_path / "one")
    a = load_checkpoint(FIXTURES / "hf" / "sharded")[1]
    b = load_checkpoint(tmp_path / "one")[1]
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(as_float(a[name], np.float32), as_float(b[name], np.float32))


def test_convert_keeps_the_tokenizer_of_a_directory(tmp_path):
    # The demo model ships without one; a stand-in file shows that it travels with the weights.
    src = tmp_path / "src"
    src.mkdir()
    for f in ("config.json", "model.safetensors"):
        (src / f).write_bytes((Path(rwkv_np.DEMO_MODEL) / f).read_bytes())
    (src / "tokenizer.json").write_text('{"stand-in": true}')
    convert(src, tmp_path / "out", "float32")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == '{"stand-in": true}'


def test_cli_convert(tmp_path, capsys):
    from rwkv_np.cli import main
    assert main(["convert", str(FIXTURES / "pth" / "tiny.pth"), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").exists() and "2 layers" in capsys.readouterr().out
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["convert", str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x")]) == 2
    assert "junk.pth" in capsys.readouterr().err
