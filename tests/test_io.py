"""probe.io: output checks, the atomic writers and the bundled model names."""

import os
import time

import pytest
import torch

from probe import io
from probe.errors import GatescopeError
from probe.paths import BUNDLED_MODELS


def test_check_out_dir(tmp_path):
    io.check_out_dir(tmp_path / "new")  # a new directory in an existing one
    (tmp_path / "empty").mkdir()
    io.check_out_dir(tmp_path / "empty")  # nothing to lose
    used = tmp_path / "used"
    used.mkdir()
    (used / "manifest.json").write_text("{}")
    with pytest.raises(GatescopeError, match="pass --resume"):
        io.check_out_dir(used)
    io.check_out_dir(used, resume=True)
    io.check_out_dir(used, force=True)
    (tmp_path / "f.json").write_text("x")
    with pytest.raises(GatescopeError, match="is a file"):
        io.check_out_dir(tmp_path / "f.json", resume=True)
    with pytest.raises(GatescopeError, match="does not exist"):
        io.check_out_dir(tmp_path / "no" / "store", resume=True)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_writers_are_atomic_and_keep_the_umask(tmp_path, umask_022):
    from safetensors.torch import load_file

    path = io.save_safetensors({"x": torch.arange(6.0).view(2, 3)[:, 1:]}, tmp_path / "t.st")
    assert torch.equal(load_file(str(path))["x"], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    io.write_json(tmp_path / "j.json", {"a": 1})
    for name in ("t.st", "j.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "t.st"]  # no temp files
    shared = torch.ones(3)  # safetensors refuses tensors that share memory, mid-write
    with pytest.raises(RuntimeError):  # a failed write leaves the old file and no temp file
        io.save_safetensors({"x": shared, "y": shared}, tmp_path / "t.st")
    assert torch.equal(load_file(str(path))["x"], torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json", "t.st"]


def test_steer_build_writes_its_vector_with_the_umask(model, tmp_path, umask_022):
    from interventions.steering import build_vector

    vec = build_vector(model, "caa", ["w1 w2 w3", "w4 w5"], ["w1 w2 w9", "w4 w8"], "resid_post.0")
    path = vec.save(tmp_path / "v")
    for file in (path, path.with_suffix(".json")):
        assert file.stat().st_mode & 0o777 == 0o644, file.name


def test_bundled_names_are_probe_paths_list():
    assert set(io.BUNDLED_MODELS) == set(BUNDLED_MODELS)
    assert "reference-hybrid" in io.BUNDLED_MODELS


@pytest.mark.parametrize(
    "typo, meant",
    [("reference-hybird", "reference-hybrid"), ("referense", "reference"),
     ("reference-plian", "reference-plain")],
)  # fmt: skip
def test_a_typo_of_a_bundled_name_is_refused_at_once(typo, meant):
    start = time.perf_counter()
    with pytest.raises(GatescopeError, match=f"did you mean {meant}\\?"):
        io.check_model_name(typo)
    assert time.perf_counter() - start < 0.5  # no hub lookup
