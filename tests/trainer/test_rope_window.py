"""longrope: a traced ONNX graph is right only up to the model's original window, so the
export's window ends there and the runtime slides past it."""

from __future__ import annotations

import json
import shutil

from tinygen import TextGenerator
from tinygen_trainer.export import ExportConfig, run_export
from tinygen_trainer.export.contract import traced_window

LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
            "factor": 4.0}


def test_a_longrope_export_keeps_to_the_original_window(tiny_llama_dir, tmp_path):
    src = shutil.copytree(tiny_llama_dir, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config.update(rope_scaling=LONGROPE, max_position_embeddings=64,
                  original_max_position_embeddings=16)
    (src / "config.json").write_text(json.dumps(config))
    said = []
    out = run_export(ExportConfig(src=src, out=tmp_path / "out"), said.append).path
    assert any("the export's window is the original 16 positions, not 64" in line for line in said)
    gen = TextGenerator(out, device="cpu")
    assert gen.manifest.context_window == 16


def test_other_ropes_keep_the_whole_window():
    assert traced_window({"rope_scaling": None}, 128) == 128
    assert traced_window({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, 128) == 128
    assert traced_window({"rope_scaling": LONGROPE, "original_max_position_embeddings": 16},
                         128) == 16
    assert traced_window({"rope_scaling": {**LONGROPE, "original_max_position_embeddings": 32}},
                         128) == 32
    assert traced_window({"rope_scaling": LONGROPE}, 128) == 128  # no original window: all of it
