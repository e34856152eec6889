"""A tokenizer.json whose template appends EOS to every text (a Llama folder with
add_eos_token true, as export copied it): a prompt ends in its text, not in that EOS."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from tinygen.tokenizer import TextTokenizer

BOS, EOS = 1, 2  # <s>, </s>


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """(a Llama-style tokenizer.json adding <s> and </s>, the same adding nothing)."""
    folder = tmp_path_factory.mktemp("template-end")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["to be, or not to be; the quick brown fox"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> $B </s>",
        special_tokens=[("<s>", BOS), ("</s>", EOS)])
    tok.save(str(folder / "tokenizer.json"))
    tok.post_processor = None
    tok.save(str(folder / "bare.json"))
    return folder / "tokenizer.json", folder / "bare.json"


def test_a_prompt_keeps_bos_and_drops_the_eos_the_template_appends(paths):
    tok, bare = TextTokenizer(paths[0]), Tokenizer.from_file(str(paths[1]))
    texts = ["To be, or not", "The quick brown fox"]
    expected = [[BOS, *bare.encode(t).ids] for t in texts]
    assert tok.encode_batch(texts) == expected
    assert [tok.encode(t) for t in texts] == expected
    long = "to be, or not to be " * 300  # past 4096 characters: encoded another way
    assert tok.encode(long) == [BOS, *bare.encode(long).ids]
    assert tok.encode("") == [BOS]
    # An EOS the prompt itself holds is the user's, and stays.
    assert tok.encode("To be</s>") == [BOS, *bare.encode("To be</s>").ids]
    assert tok.encode("To be</s>")[-1] == EOS


def test_a_tokenizer_whose_template_appends_nothing_encodes_as_before(paths):
    tok = Tokenizer.from_file(str(paths[1]))
    assert TextTokenizer(paths[1]).encode("To be</s>") == tok.encode("To be</s>").ids
