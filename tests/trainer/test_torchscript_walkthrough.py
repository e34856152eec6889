"""The TorchScript export as a PyTorch developer meets it: the loop docs/model-format.md gives,
run as written, and the models a trace cannot follow, refused rather than exported wrong."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from tinygen.errors import TinygenError
from tinygen.manifest import load_manifest
from tinygen_trainer.export import ExportConfig, run_export
from tinygen_trainer.export.torchscript import check_traceable

DOC = Path(__file__).parents[2] / "docs" / "model-format.md"


def _doc_loop() -> str:
    section = DOC.read_text(encoding="utf-8").split("## `model.pt` (TorchScript)", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_loop_decodes_like_generate(torchscript_result, tiny_source_dir, capsys):
    code = _doc_loop().replace('"my-model-ts"', repr(str(torchscript_result.path)))
    scope: dict = {}
    exec(code, scope)  # as a user would paste it
    assert capsys.readouterr().out.strip()

    manifest = load_manifest(torchscript_result.path)
    eos = list(manifest.eos_token_ids)
    model = AutoModelForCausalLM.from_pretrained(tiny_source_dir, dtype=torch.float32).eval()
    prompt = scope["prompt"]
    assert prompt == scope["tokenizer"].encode("Once upon a time").ids  # no template end here
    config = GenerationConfig(do_sample=False, max_new_tokens=20, eos_token_id=eos,
                              pad_token_id=eos[0])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)),
                             generation_config=config, use_model_defaults=False)
    assert scope["tokens"] == out[0, len(prompt):].tolist()


# transformers recomputes these frequencies in a Python branch on the positions it is given;
# a trace keeps the branch taken at the traced length, so past the original window the module
# silently used the short-sequence frequencies (logits off by ~10 there).
@pytest.mark.parametrize("rope", [
    {"rope_type": "dynamic", "factor": 2.0},
    {"type": "dynamic", "factor": 2.0},  # the older spelling
    {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
     "factor": 4.0},
])
def test_rope_that_changes_with_the_length_is_refused(tiny_llama_dir, tmp_path, rope):
    src = shutil.copytree(tiny_llama_dir, tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "rope_scaling": rope}))
    kind = rope.get("rope_type", rope.get("type"))
    with pytest.raises(TinygenError, match=f"rope type '{kind}' changes with the sequence length"):
        run_export(ExportConfig(src=src, out=tmp_path / "out", format="torchscript"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rope", [None, {"rope_type": "linear", "factor": 2.0},
                                  {"rope_type": "llama3", "factor": 8.0}])
def test_static_rope_is_traceable(rope):
    check_traceable({"model_type": "llama", "rope_scaling": rope})
