import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(min(2, torch.get_num_threads()))

ROOT = Path(__file__).resolve().parents[1]


def reference_available(name: str = "reference-gated") -> bool:
    return (ROOT / "data" / "models" / name / "model.safetensors").is_file()


needs_reference = pytest.mark.skipif(
    not reference_available() or not reference_available("reference-plain"),
    reason="reference models not trained yet (data/models/reference-*/model.safetensors)",
)
