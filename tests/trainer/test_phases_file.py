"""`train --phases FILE`: a bad phase is a one-line error naming the file and the phase."""

from __future__ import annotations

import json

import pytest

from tinygen.errors import TinygenError
from tinygen_trainer.commands.train import load_phases


@pytest.mark.parametrize("phase, match", [
    ({"data": ["a.txt"]}, r'phases.json: phase 2: no "steps"; give each phase its steps'),
    ({"data": ["a.txt"], "steps": 0}, r"phases.json: phase 2: .*steps must be an integer >= 1"),
    ({"data": ["a.txt"], "steps": 2, "learning_rate": -1},
     r"phases.json: phase 2: .*learning_rate must be > 0"),
    ({"data": [], "steps": 2}, r"phases.json: phase 2: .*needs at least one corpus"),
    ({"data": "a.txt", "steps": 2}, r"phases.json: phase 2: data must be a list"),
    ({"data": [{"path": "a.txt", "weight": 0}], "steps": 2},
     r"phases.json: phase 2: .*weight must be > 0"),
    ({"data": [{"path": "a.jsonl", "field": 5}], "steps": 2},
     r"phases.json: phase 2: .*a.jsonl: field must be a column or key name .* got 5"),
    ({"data": [{"path": "a.jsonl", "field": ["text", "title"]}], "steps": 2},
     r"phases.json: phase 2: .*field must be a column or key name"),
])
def test_bad_phase_names_file_and_phase(tmp_path, phase, match):
    spec = tmp_path / "phases.json"
    spec.write_text(json.dumps([{"data": ["a.txt"], "steps": 1}, phase]), encoding="utf-8")
    with pytest.raises(TinygenError, match=match) as info:
        load_phases(spec)
    assert "\n" not in str(info.value)


def test_good_phases_load(tmp_path):
    spec = tmp_path / "phases.json"
    spec.write_text(json.dumps([{"data": ["a.txt", {"path": "b.jsonl", "field": "body"}],
                                 "steps": 3, "learning_rate": 1e-3}]), encoding="utf-8")
    [phase] = load_phases(spec)
    assert phase.steps == 3 and [d.path for d in phase.data] == [tmp_path / "a.txt",
                                                                 tmp_path / "b.jsonl"]
    assert phase.data[1].field == "body"


def test_a_folder_as_phases_file_is_one_line_error(tmp_path):
    with pytest.raises(TinygenError) as info:
        load_phases(tmp_path)
    assert str(info.value) == f"--phases {tmp_path} is a folder; give the phases JSON file"


@pytest.mark.parametrize("flag, key", [("--weights", "weight"), ("--loss-weights", "loss_weight")])
def test_corpus_weights_beside_phases_are_refused(tmp_path, capsys, flag, key):
    """--weights with --phases was ignored, silently: there are no corpus arguments to weight."""
    from tinygen_trainer.cli import main

    spec = tmp_path / "phases.json"
    spec.write_text(json.dumps([{"data": ["a.txt"], "steps": 1}]), encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--phases", str(spec), flag, "2", "--preset", "cpu-tiny", "--tokenizer",
                 str(tmp_path / "tokenizer.json"), "-o", str(out), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: {flag} is for corpus arguments; with "
                                       f"--phases give each corpus its \"{key}\" in {spec}, and "
                                       f"drop {flag}\n")
    assert not out.exists()
