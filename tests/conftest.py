"""Shared test set-up: the hypothesis profiles and the location of ../shared/data."""
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
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (real tokenizer, rwkv.cpp's tiny models); the test skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (rwkv.cpp models, tokenizer and texts live there)")
    return SHARED_DATA
