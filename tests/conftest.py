"""Shared test set-up: the hypothesis profiles and the location of the test data.

Test data: rwkv.cpp's tiny models and expected logits (rwkvcpp/), tinyshakespeare.txt and
20B_tokenizer.json, in ../shared/data beside the repository or wherever the environment variable
RWKV_NP_TEST_DATA points (README.md, "Tests", lists the files). Tests that need them skip without."""
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# CI: derandomized (same examples every run), no deadline (first calls JIT-compile), 200 examples.
settings.register_profile("ci", max_examples=200, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED_DATA = Path(os.environ.get("RWKV_NP_TEST_DATA") or REPO.parent / "shared" / "data")


def absent(path) -> str:
    """The skip reason for missing test data: what is missing and how to provide it."""
    return (f"{path} is absent: set RWKV_NP_TEST_DATA to the directory holding rwkvcpp/, "
            "tinyshakespeare.txt and 20B_tokenizer.json (README.md, Tests)")


def shared_file(name: str) -> Path:
    """A file of the test data; the calling test skips when it is absent."""
    if not (SHARED_DATA / name).exists():
        pytest.skip(absent(SHARED_DATA / name))
    return SHARED_DATA / name


@pytest.fixture
def shared_data() -> Path:
    """The test data directory (real tokenizer, rwkv.cpp's tiny models); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(absent(SHARED_DATA))
    return SHARED_DATA


def random_state_dict(config, seed: int = 0, scale: float = 0.4) -> dict:
    """HF-named float32 weights for `config`, random but in the ranges a trained model has:
    time_decay in [-6, 3], time_first in [-3, 3], time_mix in [0, 1], LayerNorm weights near 1."""
    import numpy as np

    from rwkv_np.v4.names import expected_shapes

    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in expected_shapes(config).items():
        if "time_decay" in name:
            x = rng.uniform(-6, 3, shape)
        elif "time_first" in name:
            x = rng.uniform(-3, 3, shape)
        elif "time_mix" in name:
            x = rng.uniform(0, 1, shape)
        elif name.endswith("ln1.weight") or name.endswith("ln2.weight") or "ln_out.weight" in name \
                or "pre_ln.weight" in name:
            x = rng.uniform(0.5, 1.5, shape)
        else:
            x = rng.normal(0, scale, shape)
        sd[name] = x.astype(np.float32)
    return sd


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A saved random HF-layout model: L=7 (so the default rescale_every=6 acts), H=16, odd I."""
    from rwkv_np import RwkvConfig
    from rwkv_np.convert import save_pretrained

    config = RwkvConfig(vocab_size=61, hidden_size=16, num_hidden_layers=7, intermediate_size=37)
    save_pretrained(tmp_path, config, random_state_dict(config))
    return tmp_path
