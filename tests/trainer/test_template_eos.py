"""A folder whose tokenizer appends EOS to every text (Llama's add_eos_token true).

Its documents were trained as `<s> text </s> </s>` (the template's EOS, then the
encoder's separator), and its export's prompts ended in `</s>`, so the model was asked
to continue after the end of a text. A document now ends in one EOS, and a prompt in
its text; the BOS the template prepends stays in both.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinygen import TextGenerator
from tinygen.token_cache import TokenCacheError, load_token_cache, save_token_cache
from tinygen_trainer.data import encoder as encoder_module
from tinygen_trainer.export import export_model
from tinygen_trainer.training import TrainConfig
from tinygen_trainer.training.device import select_backend
from tinygen_trainer.training.samples import generate_sample
from tinygen_trainer.training.setup import build_encoder

DOCS = ["To be, or not to be", "The quick brown fox", ""]
BOS, EOS = 1, 2  # the tiny Llama's <s> and </s>


@pytest.fixture(scope="module")
def eos_llama_dir(tiny_llama_dir, tmp_path_factory):
    """The tiny Llama, its tokenizer_config.json saying add_bos_token and add_eos_token."""
    src = shutil.copytree(tiny_llama_dir, tmp_path_factory.mktemp("eos-llama") / "src")
    path = src / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "add_bos_token": True,
                                "add_eos_token": True, "tokenizer_class": "LlamaTokenizerFast"}))
    assert AutoTokenizer.from_pretrained(src)("a").input_ids[-1] == EOS  # the folder appends it
    return src


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(DOCS) * 40, encoding="utf-8")
    return path


@pytest.fixture
def encoder(eos_llama_dir, corpus, tmp_path):
    return build_encoder(TrainConfig(output_dir=tmp_path / "out", data=(corpus,),
                                     model=eos_llama_dir))[0]


def _text_ids(folder, text: str) -> list[int]:
    return AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False).input_ids


def test_each_training_document_is_bos_text_and_one_eos(eos_llama_dir, encoder):
    tokens, doc_ends = encoder.encode(DOCS, progress=False)
    assert tokens.tolist() == [i for doc in DOCS
                               for i in [BOS, *_text_ids(eos_llama_dir, doc), EOS]]
    assert np.count_nonzero(tokens == EOS) == len(DOCS) == doc_ends.size


def test_a_long_document_encoded_in_pieces_ends_in_one_eos(eos_llama_dir, encoder,
                                                           monkeypatch):
    monkeypatch.setattr(encoder_module, "PIECE_CHARS", 300)
    monkeypatch.setattr(encoder_module, "CUT_CONTEXT", 64)
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 40)
    tokens, _ = encoder.encode([long], progress=False)
    assert tokens.tolist() == [BOS, *_text_ids(eos_llama_dir, long), EOS]


def test_a_cache_encoded_with_two_eos_a_document_is_refused_clearly(encoder, tmp_path):
    tokens, doc_ends = encoder.encode(DOCS[:1], progress=False)
    old = {k: v for k, v in encoder.describe().items() if k != "template_end_dropped"}
    save_token_cache(tmp_path / "old.tokens", tokens, doc_ends, old)
    with pytest.raises(TokenCacheError, match="older tinygen-train.*twice; re-encode it"):
        load_token_cache(tmp_path / "old.tokens", expect=encoder.describe())
    save_token_cache(tmp_path / "new.tokens", tokens, doc_ends, encoder.describe())
    load_token_cache(tmp_path / "new.tokens", expect=encoder.describe())


def test_a_tokenizer_appending_nothing_keeps_its_caches(tiny_llama_dir, corpus, tmp_path):
    encoder = build_encoder(TrainConfig(output_dir=tmp_path / "out", data=(corpus,),
                                        model=tiny_llama_dir))[0]
    assert "template_end_dropped" not in encoder.describe()


class _Writes:
    """A stand-in model whose generate() keeps the prompt it is given and writes nothing."""

    training = True

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, **options):
        self.prompt = input_ids[0].tolist()
        return input_ids


def test_a_training_sample_continues_its_prompt_not_an_end_of_text(eos_llama_dir, encoder):
    model = _Writes()
    generate_sample(model, encoder, select_backend("cpu", "fp32"), DOCS[0], 4, 64)
    assert model.prompt == [BOS, *_text_ids(eos_llama_dir, DOCS[0])]


@pytest.fixture(scope="module")
def exported(eos_llama_dir, tmp_path_factory):
    return TextGenerator(export_model(eos_llama_dir, tmp_path_factory.mktemp("exp") / "model"),
                         device="cpu")


def test_an_exported_models_prompts_keep_bos_and_end_in_their_text(eos_llama_dir, exported):
    expected = [[BOS, *_text_ids(eos_llama_dir, doc)] for doc in DOCS[:2]]
    assert exported.prompts.encode(DOCS[:2]) == expected  # a batch of prompts
    assert exported.prompts.encode(DOCS[0]) == expected[:1]
    assert exported.tokenizer.encode_batch(DOCS[:2]) == expected
    assert exported.tokenizer.encode("") == [BOS]  # an empty prompt starts a text
    long = "to be, or not to be " * 300  # past 4096 characters: encoded another way
    assert exported.tokenizer.encode(long) == [BOS, *_text_ids(eos_llama_dir, long)]


def test_an_exported_model_continues_the_text_as_transformers_does(eos_llama_dir, exported):
    ids = [BOS, *_text_ids(eos_llama_dir, DOCS[1])]
    model = AutoModelForCausalLM.from_pretrained(eos_llama_dir).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)),
                             do_sample=False, max_new_tokens=8, min_new_tokens=8,
                             pad_token_id=EOS)
    [text] = exported.generate(DOCS[1], do_sample=False, max_new_tokens=8, min_new_tokens=8)
    assert list(text.token_ids) == out[0, len(ids):].tolist()
