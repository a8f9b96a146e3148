"""Packaging: the wheel carries the bundled reference models and task files (``data/``,
installed as the package ``gatescope_data``), and a non-editable install in a fresh venv
loads them from any directory, without reading the source checkout."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, needs_reference

PROJECT_PACKAGES = ("probe", "interventions", "circuits", "app")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_source_package_is_listed_in_pyproject():
    # pyproject lists the packages (a `packages.find` cannot map data/ to gatescope_data):
    # a new subpackage left out of the list would be missing from the wheel
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for top in PROJECT_PACKAGES
        for d in [ROOT / top, *(ROOT / top).rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    assert on_disk - listed == set(), "packages missing from pyproject.toml"
    assert {p for p in listed if not p.startswith("gatescope_data")} == on_disk


def test_the_data_package_maps_the_data_directory():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"]["gatescope_data"] == "data"
    assert (ROOT / "data" / "__init__.py").is_file()
    globs = setuptools["package-data"]
    assert globs["gatescope_data.models"] == ["*/*"]
    # every task file matches the globs the wheel takes
    patterns = globs["gatescope_data.tasks"]
    for path in (ROOT / "data" / "tasks").iterdir():
        assert path.name == "README.md" or any(path.match(p) for p in patterns), path.name


def test_a_checkout_reads_its_own_data_directory():
    from probe.paths import DATA, MODELS_DIR, TASKS_DIR, bundled_model_dir
    from probe.reference import BUNDLED, reference_path
    from probe.tasks import TASKS_DIR as tasks_dir

    assert DATA == ROOT / "data"
    assert TASKS_DIR == tasks_dir == ROOT / "data" / "tasks"
    assert MODELS_DIR == ROOT / "data" / "models"
    for name in BUNDLED:
        if (ROOT / "data" / "models" / BUNDLED[name] / "config.json").is_file():
            assert bundled_model_dir(name) == reference_path(name)


# Run in the fresh venv, from a directory outside the checkout.
_CHECK = r"""
import json, sys
from pathlib import Path

prefix = Path(sys.prefix).resolve()
from probe import load_model
from probe.paths import DATA
from probe.tasks import load_task, load_texts

m = load_model("reference")
task = load_task("ioi")
batch = task.tokenize(m.tokenizer)
texts = load_texts("sentiment_prompts")
ours = ("probe", "interventions", "circuits", "app", "gatescope_data")
files = {
    k: str(Path(v.__file__).resolve())
    for k, v in list(sys.modules.items())
    if k.split(".")[0] in ours and getattr(v, "__file__", None)
}
print(json.dumps({
    "prefix": str(prefix),
    "data": str(DATA.resolve()),
    "name": m.name,
    "family": m.family.name,
    "n_layers": m.dims.n_layers,
    "task_rows": len(task.clean),
    "batch_rows": int(batch.clean_ids.shape[0]),
    "texts": len(texts),
    "files": files,
}))
"""


def _copy_checkout(dest: Path) -> None:
    """The checkout's files (git: tracked and untracked, not ignored), without build outputs."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"],
            capture_output=True,
        )
    except FileNotFoundError:  # no git
        listed = None
    if listed is None or listed.returncode != 0:  # everything but caches and builds
        skip = shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "runs"
        )
        shutil.copytree(ROOT, dest, ignore=skip)
        return
    for rel in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / rel).is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, target)


@pytest.mark.slow
@needs_reference
def test_a_built_wheel_works_from_a_fresh_venv(tmp_path):
    py = sys.executable
    # 1. build from a copy of the checkout, so no stale build/ directory ends up in the wheel
    src = tmp_path / "src"
    _copy_checkout(src)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [py, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("gatescope-*.whl")

    # 2. a fresh venv; the dependencies (torch, transformers, ...) come from this
    #    interpreter's site-packages through a plain path line, so its .pth files (an
    #    editable install of gatescope among them) are not run
    venv = tmp_path / "venv"
    subprocess.run([py, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deps = sysconfig.get_paths()["purelib"]
    Path(purelib, "gatescope_deps.pth").write_text(deps + "\n")
    subprocess.run(
        [py, "-m", "pip", "--python", str(vpy), "install", "--no-deps", "-q", str(wheel)],
        check=True,
        cwd=tmp_path,
    )

    # 3. the library and the CLI from another directory, with no PYTHONPATH
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run(
        [str(vpy), "-c", _CHECK], capture_output=True, text=True, cwd=elsewhere, env=env
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    site = Path(purelib).resolve()
    assert Path(got["data"]) == site / "gatescope_data"
    assert got["name"] == "reference" and got["family"] == "qwen3_next"
    assert got["n_layers"] > 0 and got["task_rows"] == got["batch_rows"] > 0
    assert got["texts"] > 0
    assert {"probe", "probe.paths", "probe.load", "probe.tasks"} <= set(got["files"])
    outside = {k: f for k, f in got["files"].items() if not Path(f).is_relative_to(site)}
    assert outside == {}, "imported from outside the installed wheel"
    assert not any(Path(f).is_relative_to(ROOT.resolve()) for f in got["files"].values())

    cli = subprocess.run(
        [str(venv / "bin" / "gatescope"), "gates", "reference", "--json"]
        + ["--prompt", "When Mary and John went to the store, John gave a drink to"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        env=env,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    report = json.loads(cli.stdout)
    assert (report["model"], report["family"], report["n_prompts"]) == (
        "reference",
        "qwen3_next",
        1,
    )
    assert len(report["mean_gate"]) == got["n_layers"]


def test_no_file_names_a_path_of_this_machine():
    """Committed text (code, docs, notebook outputs) names no absolute path of a machine: a
    notebook run once left the virtual environment's path in a warning."""
    import re

    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True
    )
    if listed.returncode != 0:
        pytest.skip("no git checkout")
    machine = re.compile(r"(?<![\w.:/])/(home|Users|work|root|tmp)/[\w.-]+/")
    found = []
    for rel in filter(None, listed.stdout.decode().split("\0")):
        path = ROOT / rel
        if not path.is_file() or path.suffix in {".png", ".safetensors", ".whl", ".gz"}:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        found += [f"{rel}: {m.group(0)}" for m in machine.finditer(text)]
    assert not found, found[:10]
