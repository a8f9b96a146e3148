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


@pytest.fixture(scope="session")
def tiny_model():
    """Factory: ``tiny_model("qwen3_next_hybrid", seed=0)`` -> a fresh gatescope Model of a
    tiny random model of that architecture (tiny.CONFIGS names every one; tiny_gated.CONFIGS
    the gated families built from their own configs); ``name`` sets ``Model.name``."""
    from tiny import CONFIGS, tiny_hf, tiny_tokenizer

    from probe import load_model

    def make(arch: str = "qwen3_next", seed: int = 0, attn: str = "eager", name: str = ""):
        if arch in CONFIGS:
            hf = tiny_hf(arch, seed, attn=attn)
        else:
            from tiny_gated import tiny_gated_hf

            hf = tiny_gated_hf(arch, seed)
        model = load_model(hf, tokenizer=tiny_tokenizer())
        if name:
            model.name = name
        return model

    return make


@pytest.fixture(scope="module")
def model(tiny_model):
    """The tiny qwen3_next model (gated attention, GLU MLPs), one per test module."""
    return tiny_model("qwen3_next")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Factory: ``tiny_dir("llama")`` -> the path (str) of a saved tiny model directory (model
    and tokenizer) of an architecture; saved once per session and never written to."""
    from tiny import save_tiny

    saved: dict[tuple[str, int], str] = {}

    def make(arch: str = "qwen3_next", seed: int = 0) -> str:
        if (arch, seed) not in saved:
            root = tmp_path_factory.mktemp(f"{arch}-{seed}")
            saved[(arch, seed)] = str(save_tiny(root / "tiny", arch, seed))
        return saved[(arch, seed)]

    return make


@pytest.fixture(scope="session")
def model_dir(tiny_dir):
    """The saved tiny qwen3_next model directory (str), for CLI and app tests."""
    return tiny_dir("qwen3_next")


@pytest.fixture(scope="session")
def make_task():
    """Factory: ``make_task("toy", n=4)`` -> a Task over the tiny vocabulary: ``toy`` (the
    first two words swapped), ``late`` (one word near the end replaced: a shared prefix) or
    ``replace`` (the third word replaced); ``path=`` also writes it as task JSONL there."""
    import json

    from tiny import late_task, replace_task, toy_task

    kinds = {"toy": toy_task, "late": late_task, "replace": replace_task}

    def make(kind: str = "toy", path=None, **kw):
        task = kinds[kind](**kw)
        if path is not None:
            rows = zip(task.clean, task.corrupt, task.answers, task.wrongs, strict=True)
            Path(path).write_text(
                "".join(
                    json.dumps({"clean": c, "corrupt": k, "answer": a, "wrong": w}) + "\n"
                    for c, k, a, w in rows
                )
            )
        return task

    return make


@pytest.fixture()
def files(tmp_path):
    """(task JSONL, contrast pairs JSONL, prompts file) over the tiny vocabulary."""
    import json

    task = tmp_path / "task.jsonl"
    task.write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"clean": "w1 w2 w3", "corrupt": "w4 w2 w3", "answer": "w5", "wrong": "w6"},
                {"clean": "w7 w8 w9", "corrupt": "w10 w8 w9", "answer": "w11", "wrong": "w12"},
            ]
        )
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"positive": f"w{i} w3", "negative": f"w{i} w9"}) + "\n"
            for i in range(20, 25)
        )
    )
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2\nw3 w4 w5\n")
    return task, pairs, prompts
