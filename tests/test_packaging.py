"""Packaging of the three distributions, read from their pyproject.toml files and source folders
(nothing is built or installed here: a few milliseconds, offline).

What a wheel built from packages/* holds follows from these settings: the runtime's own code and
its playground page, the whole embedded model and nothing else, sane pins and one version.
"""

from __future__ import annotations

import mmap
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {  # folder under packages/ -> its import package
    "runtime": "tinygen",
    "trainer": "tinygen_trainer",
    "tinymodel": "tinygen_tinymodel",
}
RUNTIME_CODE_LIMIT = 3_000_000  # bytes: the runtime stays small enough to embed


def _pyproject(name: str) -> dict:
    return tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(project: dict) -> list[Requirement]:
    extras = project.get("optional-dependencies", {})
    return [Requirement(r) for r in [*project.get("dependencies", []), *sum(extras.values(), [])]]


def _source(name: str) -> Path:
    return ROOT / "packages" / name / "src" / PACKAGES[name]


@pytest.mark.parametrize("name", PACKAGES)
def test_the_build_backend_understands_the_licence_field(name):
    """`license = "MIT"` (an SPDX string, PEP 639) needs setuptools 77: older ones refuse the
    project outright, which a distributor building without isolation would meet."""
    data = _pyproject(name)
    assert isinstance(data["project"]["license"], str)
    setuptools = next(Requirement(r) for r in data["build-system"]["requires"]
                      if Requirement(r).name == "setuptools")
    assert not setuptools.specifier.contains("76.99"), setuptools


@pytest.mark.parametrize("name", PACKAGES)
def test_one_version_per_package(name):
    project = _pyproject(name)["project"]
    init = (_source(name) / "__init__.py").read_text(encoding="utf-8")
    found = re.search(r'^__version__ = "([^"]+)"', init, re.M)
    assert found and found.group(1) == project["version"], f"{name}: __init__ and pyproject differ"


def test_the_trainer_pins_the_runtime_release_it_was_written_against():
    """It imports the runtime's modules (manifest, errors, atomic...), not only its API."""
    runtime = _pyproject("runtime")["project"]["version"]
    pin = next(r for r in _requirements(_pyproject("trainer")["project"]) if r.name == "tinygen")
    assert str(pin.specifier) == f"=={runtime}"


def test_the_runtime_never_depends_on_torch_or_transformers():
    project = _pyproject("runtime")["project"]
    names = {r.name.lower() for r in _requirements(project)}
    assert not names & {"torch", "transformers", "optimum", "optimum-onnx", "accelerate"}, names


def test_the_runtime_floors_are_releases_that_run_the_embedded_model():
    """onnxruntime < 1.23 refuses the embedded model's GatherBlockQuantized (`bits`); tokenizers
    < 0.22 has no DecodeStream primed with ids. Floors below them install and then fail."""
    reqs = {r.name.lower(): r.specifier for r in _requirements(_pyproject("runtime")["project"])}
    for name, broken in (("onnxruntime", "1.22.9"), ("tokenizers", "0.21.9")):
        assert not reqs[name].contains(broken), f"{name}{reqs[name]} lets {broken} in"


def test_every_torch_requirement_is_pinned():
    """An unpinned torch lets pip pick any build; with a pin, the CPU wheel the machines offer
    (2.13.0+cpu) satisfies it and no multi-GB CUDA build is chosen over it."""
    for name in PACKAGES:
        for req in _requirements(_pyproject(name)["project"]):
            if req.name.lower() in ("torch", "torchvision", "torchaudio", "torch-xla"):
                assert any(s.operator == "==" for s in req.specifier), f"{name}: {req}"
    trainer = {r.name: r for r in _requirements(_pyproject("trainer")["project"])}
    assert trainer["torch"].specifier == SpecifierSet("==2.13.0")
    assert Version("2.13.0+cpu") in trainer["torch"].specifier  # the local CPU wheel fits the pin


def test_entry_points_name_functions_that_exist():
    for name, script, target in (("runtime", "tinygen", "tinygen.cli:main"),
                                 ("trainer", "tinygen-train", "tinygen_trainer.cli:main")):
        assert _pyproject(name)["project"]["scripts"] == {script: target}
        module, func = target.split(":")
        path = ROOT / "packages" / name / "src" / (module.replace(".", "/") + ".py")
        assert re.search(rf"^def {func}\(", path.read_text(encoding="utf-8"), re.M), target


def test_the_runtime_code_stays_small_and_ships_its_playground():
    code = [p for p in _source("runtime").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts]
    assert sum(p.stat().st_size for p in code) < RUNTIME_CODE_LIMIT
    setuptools = _pyproject("runtime")["tool"]["setuptools"]
    static = _source("runtime") / "serving" / "static"
    shipped = {p for pattern in setuptools["package-data"]["tinygen.serving"]
               for p in (static.parent).glob(pattern)}
    assert shipped == set(static.iterdir()) and (static / "playground.html") in shipped
    # every non-Python file of the package is package data (else wheels would drop it)
    others = {p for p in code if p.suffix != ".py"}
    assert others <= shipped, sorted(map(str, others - shipped))


def test_the_embedded_model_ships_exactly_the_files_it_needs():
    """The tiny model's package data is its manifest, the files the manifest names, the weights
    files the graph reads and the model card: all present, nothing stray (a leftover
    model.onnx.data or an editor's backup would ship in every wheel under `model/*`)."""
    from tinygen.manifest import MANIFEST_NAME, load_manifest
    from tinygen.weights_files import external_extents

    package = _source("tinymodel")
    folder = package / "model"
    manifest = load_manifest(folder)
    needed = {MANIFEST_NAME, "MODEL_CARD.md", manifest.model_file, manifest.tokenizer_file}
    needed |= {f for f in (manifest.replacements_file, manifest.fields_file) if f}
    with open(folder / manifest.model_file, "rb") as file, \
            mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        weights = external_extents(data)
    for location, end in weights.items():
        assert (folder / location).stat().st_size >= end, location
    needed |= set(weights)
    present = {p.name for p in folder.iterdir() if p.name != "__pycache__"}
    assert present == needed
    patterns = _pyproject("tinymodel")["tool"]["setuptools"]["package-data"]["tinygen_tinymodel"]
    shipped = {p.name for pattern in patterns for p in package.glob(pattern) if p.is_file()}
    assert shipped == needed
    assert _pyproject("tinymodel")["project"]["dependencies"] == []  # data only: no code to pull


def test_without_the_tiny_model_the_cli_says_how_to_get_it(monkeypatch):
    import io

    from tinygen.cli import main

    monkeypatch.setitem(sys.modules, "tinygen_tinymodel", None)  # as if not installed
    out, err = io.StringIO(), io.StringIO()
    assert main(["Hi"], out=out, err=err) == 2
    message = err.getvalue()
    assert message.count("\n") == 1 and out.getvalue() == ""
    assert "embedded tiny model is not installed" in message
    assert "pip install tinygen-tinymodel" in message and "--model DIR" in message


def test_without_the_tiny_model_python_users_are_told_how_to_name_one(monkeypatch):
    from tinygen import TextGenerator, TinygenError

    monkeypatch.setitem(sys.modules, "tinygen_tinymodel", None)
    with pytest.raises(TinygenError, match=r"pip install tinygen-tinymodel.*TextGenerator\(model=DIR\)"):
        TextGenerator()


@pytest.mark.parametrize("damage", ["truncated", "missing", "manifest"])
def test_a_damaged_tiny_model_install_is_one_line_that_says_reinstall(tmp_path, monkeypatch,
                                                                      damage):
    import io

    import tinygen_tinymodel
    from tinygen.cli import main

    shipped = _source("tinymodel") / "model"
    for f in shipped.iterdir():  # a copy of the install, without copying 18 MB
        if f.name != ("tinygen.json" if damage == "manifest" else "model.onnx"):
            (tmp_path / f.name).symlink_to(f)
    if damage == "truncated":
        with open(shipped / "model.onnx", "rb") as file:
            (tmp_path / "model.onnx").write_bytes(file.read(4096))
    monkeypatch.setattr(tinygen_tinymodel, "model_dir", lambda: tmp_path)
    out, err = io.StringIO(), io.StringIO()
    assert main(["Hi", "--max-new-tokens", "2"], out=out, err=err) == 2
    message = err.getvalue()
    assert message.count("\n") == 1 and out.getvalue() == ""
    assert "embedded tiny model is damaged" in message
    assert "pip install --force-reinstall tinygen-tinymodel" in message
    assert ("tinygen.json" if damage == "manifest" else "model.onnx") in message
    assert "tinygen-train export" not in message


@pytest.mark.parametrize("name", PACKAGES)
def test_each_distribution_ships_its_licence(name):
    """The wheel's dist-info takes the files `license-files` names; the tiny model's NOTICE
    credits the model it derives from, as its Apache-2.0 licence asks."""
    project = _pyproject(name)["project"]
    files = [ROOT / "packages" / name / f for f in project["license-files"]]
    assert files and all(f.is_file() and f.stat().st_size for f in files)
    text = files[0].read_text(encoding="utf-8")
    assert ("MIT License" in text) == (project["license"] == "MIT")
    assert ("Apache License" in text) == (project["license"] == "Apache-2.0")
    if name == "tinymodel":
        assert "SmolLM2-135M-Instruct" in (ROOT / "packages" / name / "NOTICE").read_text()
