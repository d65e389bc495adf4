"""The README's Python examples run as written (in a scratch directory), and with an RWKV-7 model
(a random fla-layout directory, rwkv.cpp's tiny 7v0 file) in place of the demo model."""
import re

import pytest

from conftest import REPO
from test_v7_cli import random_dir  # noqa: F401  (fixture)


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the examples write a state file
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


@pytest.mark.parametrize("model", ["random_dir", "tiny_bin"])
def test_readme_python_examples_run_on_rwkv7(model, request, tmp_path, monkeypatch):
    if model == "random_dir":
        path = request.getfixturevalue("random_dir").path
    else:
        path = str(request.getfixturevalue("shared_data") / "rwkvcpp" / "tiny-rwkv-7v0-834K-FP32.bin")
    blocks = [b for b in python_blocks() if "rwkv_np.DEMO_MODEL" in b]
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.replace("rwkv_np.DEMO_MODEL", repr(path)), "README.md", "exec"), {})
