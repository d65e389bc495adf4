"""The README's Python examples run as written (in a scratch directory)."""
import re

from conftest import REPO


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the examples write a state file
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
