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


@pytest.fixture
def tiny_model():
    """Factory: ``tiny_model("qwen3_next_hybrid", seed=0)`` -> a gatescope Model of a tiny
    random model of that architecture (tiny.CONFIGS names every one)."""
    from tiny import tiny_hf, tiny_tokenizer

    from probe import load_model

    def make(name: str = "qwen3_next", seed: int = 0, attn: str = "eager"):
        return load_model(tiny_hf(name, seed, attn=attn), tokenizer=tiny_tokenizer())

    return make


@pytest.fixture
def model_dir(tmp_path):
    """Factory: a saved tiny model directory (model + tokenizer) of an architecture."""
    from tiny import save_tiny

    def make(name: str = "qwen3_next", seed: int = 0):
        return save_tiny(tmp_path / name, name, seed)

    return make
