"""Every notebook in notebooks/ runs top to bottom on the reference models."""

from pathlib import Path

import pytest
from conftest import ROOT, needs_reference

pytestmark = pytest.mark.slow  # executed in the second CI step (make test runs both)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@needs_reference
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
