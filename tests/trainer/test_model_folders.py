"""Model folders with missing or damaged weights, or no LM head: one line from every command,
before any corpus is encoded."""

from __future__ import annotations

import shutil

import pytest

from tinygen_trainer.cli import main

TEXT = "Once upon a time there was a little model that wanted to write stories. " * 40


@pytest.fixture(scope="module")
def folders(tiny_gpt2_dir, tmp_path_factory):
    """noweights (config and tokenizer only), badweights (a truncated model.safetensors),
    badbin (a truncated pytorch_model.bin), bertish (a bare BertModel, no LM head)."""
    import torch
    from transformers import BertConfig, BertModel, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("folders")
    for name in ("noweights", "badweights", "badbin", "bertish"):
        (root / name).mkdir()
        shutil.copy(tiny_gpt2_dir / "tokenizer.json", root / name)
    for name in ("noweights", "badweights", "badbin"):
        shutil.copy(tiny_gpt2_dir / "config.json", root / name)
    head = (tiny_gpt2_dir / "model.safetensors").read_bytes()[:1000]
    (root / "badweights" / "model.safetensors").write_bytes(head)
    GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).save_pretrained(root / "bin",
                                                                  safe_serialization=False)
    whole = (root / "bin" / "pytorch_model.bin").read_bytes()
    (root / "badbin" / "pytorch_model.bin").write_bytes(whole[:len(whole) // 2])
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=400, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)
              ).save_pretrained(root / "bertish")
    (root / "corpus.txt").write_text(TEXT, encoding="utf-8")
    return root


@pytest.fixture
def no_encoding(monkeypatch):
    """Fails the test if a corpus is encoded: the model folder is checked before that."""
    from tinygen_trainer.data.dataset import TokenDataset

    def must_not_run(*args, **kwargs):
        raise AssertionError("the corpus was encoded before the model folder was checked")

    monkeypatch.setattr(TokenDataset, "from_path", must_not_run)


FAULTS = [("noweights", "noweights: no model weights"),
          ("badweights", "model.safetensors: truncated or corrupt"),
          ("badbin", "pytorch_model.bin: truncated or corrupt"),
          ("bertish", "bertish: BertModel is not a causal language model")]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    return err


@pytest.mark.parametrize("name, message", FAULTS)
def test_train_refuses_the_model_folder_before_encoding(folders, no_encoding, tmp_path, capsys,
                                                        name, message):
    out = tmp_path / "run"
    assert main(["train", str(folders / "corpus.txt"), "--model", str(folders / name), "-o",
                 str(out), "--steps", "2", "--quiet"]) == 2
    assert message in one_line_error(capsys)
    assert not out.exists()


@pytest.mark.parametrize("name, message", FAULTS)
def test_teacher_cache_refuses_the_teacher_before_encoding(folders, no_encoding, tmp_path, capsys,
                                                           name, message):
    assert main(["teacher-cache", str(folders / "corpus.txt"), "--teacher", str(folders / name),
                 "-o", str(tmp_path / "cache"), "--block-size", "16", "--quiet"]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "cache").exists()


def test_one_step_distill_refuses_a_teacher_without_lm_head(folders, no_encoding, tmp_path, capsys):
    assert main(["distill", str(folders / "corpus.txt"), "--teacher", str(folders / "bertish"),
                 "--preset", "cpu-tiny", "--tokenizer", str(folders / "bertish" / "tokenizer.json"),
                 "-o", str(tmp_path / "student"), "--block-size", "16", "--quiet"]) == 2
    assert "BertModel is not a causal language model" in one_line_error(capsys)


@pytest.mark.parametrize("name, message", FAULTS[1:3])  # missing weights and no LM head: already
def test_export_refuses_the_model_folder(folders, tmp_path, capsys, name, message):
    assert main(["export", str(folders / name), str(tmp_path / "out")]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_whole_folders_still_pass_the_check(tiny_gpt2_dir, tiny_llama_dir, folders):
    from tinygen_trainer.export.source import load_causal_lm

    for folder in (tiny_gpt2_dir, tiny_llama_dir, folders / "bin"):
        assert load_causal_lm(folder).config.vocab_size > 0
