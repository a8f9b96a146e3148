"""The README's examples run as written (so they cannot drift from the code): its Python
blocks, and its `gatescope` commands on the bundled models."""

import re
import shlex
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


def _bundled_commands() -> list[str]:
    """The ``gatescope`` lines of the README's bash blocks that run on a bundled model."""
    from probe.paths import BUNDLED_MODELS

    lines = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.splitlines():
            words = shlex.split(line) if "gatescope " in line else []
            if words and words[0].endswith("gatescope") and len(words) > 2:
                if words[2] in BUNDLED_MODELS:  # `gatescope COMMAND MODEL ...`
                    lines.append(line)
    return lines


COMMANDS = _bundled_commands()


def test_the_readme_has_commands_on_bundled_models():
    assert any(" gates reference " in c for c in COMMANDS), COMMANDS
    assert any(" trace reference " in c for c in COMMANDS), COMMANDS


@pytest.mark.slow
@pytest.mark.parametrize("line", COMMANDS, ids=[shlex.split(c)[1] for c in COMMANDS])
def test_readme_command_runs(line, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from app.cli import app

    monkeypatch.chdir(tmp_path)  # outputs such as acts.safetensors land here
    words = shlex.split(line)
    res = CliRunner().invoke(app, [*words[1:], "-q"])
    assert res.exit_code == 0, res.output
    out = words[words.index("--out") + 1] if "--out" in words else None
    assert out is None or (tmp_path / out).stat().st_size > 0
