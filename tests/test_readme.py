"""The README's Python examples run as written (the ones reading ../shared/ only when it is there)."""
import re
from pathlib import Path

import pytest

from shared_data import shared_dir

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 3


def test_readme_examples_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(README.parent)
    namespace = {}
    shared = shared_dir()
    ran = 0
    for block in BLOCKS:
        if "../shared" in block:
            if shared is None:
                continue
            block = block.replace("../shared", str(shared))
        block = block.replace("/tmp/run.safetensors", str(tmp_path / "run.safetensors"))
        exec(compile(block.replace("/tmp/model.safetensors", str(tmp_path / "model.safetensors")),
                     str(README), "exec"), namespace)
        ran += 1
    assert namespace["accuracy"] > 0.8  # the digits example trained for real
    if shared is None:
        pytest.skip(f"ran {ran} of {len(BLOCKS)} README examples; the rest need ../shared")
    assert "hidden" in namespace and namespace["hidden"].shape == (1, 1500, 384)
