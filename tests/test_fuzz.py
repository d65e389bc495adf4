"""Fuzzing the loaders: a damaged file loads correctly or raises the documented error, nothing else.

Hypothesis mutates valid tiny model files — overwritten bytes (random, or ASCII digits inside a
JSON header so that numbers change but the JSON stays valid), inserted and deleted bytes, and a
truncation — and each result is loaded and, when the load succeeds, run for two tokens. The
property: the outcome is a model or a ModelFileError / ConfigError. Any other exception (IndexError,
OverflowError, a bare ValueError from NumPy...), a crash or a hang (> 20 s, via SIGALRM) fails.
500 examples per format (derandomized in the CI profile, see conftest.py).
"""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, random_state_dict
from rwkv_np import ConfigError, ModelFileError, RwkvConfig, RwkvForCausalLM
from test_errors import CONFIG, rwkvcpp_bytes, safetensors_bytes, safetensors_parts

DOCUMENTED = (ModelFileError, ConfigError)
EXAMPLES = 500


class Target(tuple):
    """(valid bytes, ...) with a short repr, so that hypothesis's reports stay readable."""
    def __repr__(self):
        return f"Target({len(self[0])} valid bytes)"


@contextlib.contextmanager
def time_limit(seconds: int):
    """Fail instead of hanging: SIGALRM raises in the main thread after `seconds`."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"no result after {seconds} s")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def damage(draw, data: bytes, header_end: int) -> bytes:
    """A few byte edits of `data` (positions biased towards its first `header_end` bytes,
    where the structure lives), then maybe a truncation."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        where = st.integers(0, min(header_end, len(out)) - 1) if header_end else st.nothing()
        pos = draw(st.one_of(where, st.integers(0, len(out) - 1)))
        kind = draw(st.sampled_from(["byte", "digit", "insert", "delete"]))
        if kind == "byte":
            out[pos] = draw(st.integers(0, 255))
        elif kind == "digit":
            out[pos] = draw(st.sampled_from(b"0123456789"))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        else:
            del out[pos:pos + draw(st.integers(1, 8))]
    if draw(st.booleans()):
        out = out[:draw(st.integers(0, len(out)))]
    return bytes(out)


def load_and_run(load):
    """Run `load` (-> a model or None); a successful load must also run two tokens."""
    with time_limit(20), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in a damaged weight is fine
        try:
            model = load()
        except DOCUMENTED:
            return "refused"
        model([0, 1])
        return "loaded"


# -- safetensors --------------------------------------------------------------------------------

def _mixed_precision() -> bytes:
    """Tiny model, half of its tensors float16: both element sizes in one header."""
    tensors = random_state_dict(RwkvConfig.from_dict(CONFIG), seed=3)
    tensors = {n: x.astype(np.float16) if i % 2 else x for i, (n, x) in enumerate(sorted(tensors.items()))}
    return safetensors_bytes(*safetensors_parts(tensors))


def _int8() -> bytes:
    """Tiny model in rwkv_np's int8 format (`rwkv-np quantize`): I8 matrices + F32 row scales."""
    from rwkv_np.convert import save_pretrained
    config = RwkvConfig.from_dict(CONFIG)
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(d, config, random_state_dict(config, seed=3), dtype="int8")
        return (Path(d) / "model.safetensors").read_bytes()


SAFETENSORS_SOURCES = {
    "f32_f16": (_mixed_precision, json.dumps(CONFIG)),
    "int8": (_int8, json.dumps(CONFIG)),
    "bf16_fixture": (lambda: (FIXTURES / "hf" / "bf16" / "model.safetensors").read_bytes(),
                     lambda: (FIXTURES / "hf" / "bf16" / "config.json").read_text()),
}


@pytest.fixture(scope="module", params=SAFETENSORS_SOURCES)
def safetensors_target(request, tmp_path_factory):
    make, config = SAFETENSORS_SOURCES[request.param]
    data = make()
    directory = tmp_path_factory.mktemp(f"fuzz_{request.param}")
    (directory / "config.json").write_text(config if isinstance(config, str) else config())
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    return Target((data, header_end, directory))


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_damaged_safetensors(safetensors_target, data):
    valid, header_end, directory = safetensors_target
    (directory / "model.safetensors").write_bytes(data.draw(damage(valid, header_end)))
    load_and_run(lambda: RwkvForCausalLM.from_pretrained(directory))


def test_safetensors_fuzz_targets_are_valid(safetensors_target):
    valid, _, directory = safetensors_target
    (directory / "model.safetensors").write_bytes(valid)
    assert load_and_run(lambda: RwkvForCausalLM.from_pretrained(directory)) == "loaded"


# -- rwkv.cpp .bin --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rwkvcpp_target(tmp_path_factory):
    data = rwkvcpp_bytes(tensors=random_state_dict(RwkvConfig.from_dict(CONFIG), seed=4))
    return Target((data, tmp_path_factory.mktemp("fuzz_bin") / "model.bin"))


def _load_rwkvcpp(path):
    return RwkvForCausalLM.from_pretrained(path)  # the public path: reader, shape and finiteness checks


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_damaged_rwkvcpp(rwkvcpp_target, data):
    valid, path = rwkvcpp_target
    # The header and the first records (the small vectors come first) hold the structure.
    path.write_bytes(data.draw(damage(valid, 24 + 400)))
    load_and_run(lambda: _load_rwkvcpp(path))


def test_rwkvcpp_fuzz_target_is_valid(rwkvcpp_target):
    valid, path = rwkvcpp_target
    path.write_bytes(valid)
    assert load_and_run(lambda: _load_rwkvcpp(path)) == "loaded"


# -- torch .pth -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pth_target(tmp_path_factory):
    pytest.importorskip("rwkv_np.formats.pth")
    source = FIXTURES / "pth" / "tiny.pth"
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    directory = tmp_path_factory.mktemp("fuzz_pth")
    shutil.copy(source, directory / "valid.pth")
    return Target((source.read_bytes(), directory / "model.pth"))


def _load_pth(path):
    return RwkvForCausalLM.from_pretrained(path)  # through convert.load_checkpoint


@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_damaged_pth(pth_target, data):
    valid, path = pth_target
    # A zip: local headers and data.pkl at the start, the central directory at the end.
    edited = data.draw(damage(valid, 4096))
    if data.draw(st.booleans()):  # also hit the central directory
        tail = data.draw(damage(edited[-1024:], 1024))
        edited = edited[:-1024] + tail
    path.write_bytes(edited)
    load_and_run(lambda: _load_pth(path))


def test_pth_fuzz_target_is_valid(pth_target):
    valid, path = pth_target
    path.write_bytes(valid)
    assert load_and_run(lambda: _load_pth(path)) == "loaded"
