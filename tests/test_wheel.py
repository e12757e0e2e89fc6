"""The wheel must carry patches/ (as gna_diffusers.patches) and the YAML presets, so a plain
non-editable ``pip install .`` works without the source tree."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("gna_diffusers", "patches", "configs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
    )
    (path,) = out.glob("gna_diffusers-*.whl")
    return path


@pytest.mark.slow
def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"gna_diffusers/patches/{p.name}" for p in (ROOT / "patches").glob("*.py")}
    presets = {f"gna_diffusers/configs/{p.name}" for p in (ROOT / "configs").glob("*.yaml")}
    assert "gna_diffusers/configs/flux-4k.yaml" in presets
    expected |= presets
    expected |= {"gna_diffusers/__init__.py", "gna_diffusers/backends/__init__.py", "gna_diffusers/cli.py"}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("patches/", "configs/", "tests/")) for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gna-diffusers = gna_diffusers.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_installed_wheel_imports_without_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    code = (
        "import gna_diffusers, gna_diffusers.patches, importlib.resources as r;"
        "print(gna_diffusers.__file__); print(gna_diffusers.patches.__file__);"
        "print(sorted(p.name for p in r.files('gna_diffusers.configs').iterdir() if p.name.endswith('.yaml')))"
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    lines = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert all(line.startswith(str(target)) for line in lines[:2]), lines
    assert lines[2] == repr(sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
    sim = subprocess.run(
        [sys.executable, "-m", "gna_diffusers.cli", "sim", "--paper"], cwd=tmp_path, env=env, capture_output=True,
        text=True, check=True,
    )
    assert "10.24x" in sim.stdout
    presets = subprocess.run(
        [sys.executable, "-m", "gna_diffusers.cli", "presets", "show", "flux-4k"], cwd=tmp_path, env=env,
        capture_output=True, text=True, check=True,
    )
    assert "window: [80, 80]" in presets.stdout
