"""Causal LMs beyond GPT-2 and Llama go through optimum's graph: their shape is read from
config.json as transformers reads it, and one optimum cannot export is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tinygen.manifest import load_manifest
from tinygen_trainer.cli import main


def test_falcon_multi_query_exports_with_its_one_kv_head(tiny_model, tmp_path, capsys):
    """Falcon names its key/value heads num_kv_heads and, with multi_query (its default),
    has one whatever that says; read as num_key_value_heads, 4 heads were refused."""
    import torch

    src = tiny_model(tmp_path / "falcon", "FalconConfig", "FalconForCausalLM", num_kv_heads=4,
                     max_position_embeddings=64)
    out = tmp_path / "out"
    assert main(["export", str(src), str(out)]) == 0, capsys.readouterr().err
    assert "verified: 32/32 greedy tokens match PyTorch" in capsys.readouterr().out
    assert load_manifest(out).num_kv_heads == 1

    from tinygen import TextGenerator
    from transformers import AutoModelForCausalLM

    [text] = TextGenerator(out).generate([5, 9, 14], do_sample=False, max_new_tokens=12,
                                         stop_at_eos=False)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        want = model.generate(torch.tensor([[5, 9, 14]]), do_sample=False, max_new_tokens=12,
                              min_new_tokens=12)[0, 3:].tolist()
    assert np.array_equal(text.token_ids, want)


def test_an_architecture_optimum_fails_on_is_one_line(tiny_model, tmp_path, capsys):
    """Falcon's new decoder with fewer KV heads than heads: optimum's trace raises a
    RuntimeError (its dummy cache), which came out as a traceback of 120 lines."""
    src = tiny_model(tmp_path / "falcon-new", "FalconConfig", "FalconForCausalLM",
                     new_decoder_architecture=True, num_kv_heads=2, max_position_embeddings=64)
    assert main(["export", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimum cannot export this model (RuntimeError: " in err, err


def test_a_model_without_a_context_window_says_so(tiny_model, tmp_path, capsys):
    """bloom (ALiBi) has no max_position_embeddings: the error named only --block-size, which
    could not help, and export listed all it needs without saying what was missing."""
    src = tiny_model(tmp_path / "bloom", "BloomConfig", "BloomForCausalLM")
    (tmp_path / "corpus.txt").write_text("Once upon a time there was a model. " * 50)
    assert main(["train", str(tmp_path / "corpus.txt"), "--model", str(src), "-o",
                 str(tmp_path / "run"), "--steps", "1", "--block-size", "32", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot tell the model's context window" in err and "ALiBi" in err and \
        "--block-size" not in err, err
    assert main(["export", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no context window (max_position_embeddings) in it, as in " \
        "models whose positions are not embedded (ALiBi: Bloom, MPT); set max_position_embeddings " \
        "there to the longest text to run" in err, err
    # as it says: with a window set, it exports
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    assert main(["export", str(src), str(tmp_path / "out")]) == 0


def test_a_model_without_attention_says_tinygen_runs_transformers():
    """Mamba was refused as having 'no number of attention heads'."""
    from tinygen.errors import ModelFormatError
    from tinygen.manifest import manifest_from_hf_config

    with pytest.raises(ModelFormatError) as info:
        manifest_from_hf_config({"model_type": "mamba", "num_hidden_layers": 2, "hidden_size": 64,
                                 "vocab_size": 100})
    assert str(info.value) == ("config.json: a 'mamba' model has no attention heads, so no KV "
                               "cache for tinygen to run it with; tinygen runs transformer decoders")
