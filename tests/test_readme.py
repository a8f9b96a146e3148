"""The README's Python examples run as written (so they cannot drift from the code)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_examples():
    assert BLOCKS, "no ```python blocks found in README.md"


@pytest.mark.slow
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, capsys):
    import torch

    torch.set_num_threads(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102
    if "tr" in namespace and "model" in namespace:  # the shape the comment promises
        dims = namespace["model"].dims
        assert tuple(namespace["tr"]["attn_gate.1"].shape) == (1, 1, dims.n_heads, dims.d_head)
