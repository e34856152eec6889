"""Replacement rules keep special tokens whole, in training and at generation alike."""

import pytest

from tinygen.errors import TinygenError
from tinygen.fields import FieldSchema
from tinygen.replacements import EncodeRule, Replacements
from tinygen.tokenizer import TextTokenizer
from tinygen_trainer.data import Encoder
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

URL = Replacements((EncodeRule(r"https?://\S+", "<|url|>", regex=True),))


def test_a_rule_never_swallows_a_special_token():
    # \S+ would run on through '<|keywords|>a' (no space in it), dropping the field token.
    text = "<|title|>see https://x.org/a<|keywords|>a, b<|body|>"
    assert URL.apply_encode(text, {"<|title|>", "<|keywords|>", "<|body|>"}) == \
        "<|title|>see <|url|><|keywords|>a, b<|body|>"


def test_a_later_rule_never_matches_inside_an_earlier_rules_token():
    rules = Replacements((EncodeRule(r"https?://\S+", "<|url|>", regex=True),
                          EncodeRule("url", "<|word|>")))
    assert rules.apply_encode("a https://x.org url") == "a <|url|> <|word|>"


def test_the_trainer_and_the_runtime_encode_a_record_alike(tmp_path):
    schema = FieldSchema(("title", "keywords", "body"))
    record = {"title": "see https://x.org/a", "keywords": ["rain", "sea"], "body": "wet and grey"}
    doc = schema.format(record)
    config = TokenizerConfig(vocab_size=300, special_tokens=tuple(schema.tokens()),
                             replacements=URL, progress=False)
    path = save_tokenizer(train_tokenizer([doc] * 5, config), tmp_path / "tokenizer.json", URL)
    trained, _ = Encoder.load(path, URL).encode([doc], progress=False)
    runtime = TextTokenizer(path, URL)
    head, _ = schema.prompt({"title": record["title"], "keywords": record["keywords"]})
    ids = runtime.encode(head)
    names = [runtime.tokenizer.id_to_token(i) for i in ids]
    assert "<|keywords|>" in names and names[-1] == "<|body|>" and "<|url|>" in names
    assert list(trained[:len(ids)]) == ids


def test_a_rule_to_an_ordinary_token_is_refused(tmp_path):
    """An ordinary token's name ("Ġsee") put in the text was tokenized as its characters:
    the rule silently never gave its token."""
    config = TokenizerConfig(vocab_size=300, progress=False)
    path = save_tokenizer(train_tokenizer(["we see the sea, we see it"] * 5, config), tmp_path / "t.json")
    ordinary = next(t for t in TextTokenizer(path).tokenizer.get_vocab() if t.startswith("\u0120") and len(t) > 2)
    rules = Replacements((EncodeRule("ACME", ordinary),), source="mine.json")
    with pytest.raises(TinygenError, match=f"mine.json: 'encode' maps to '{ordinary}', an ordinary token"):
        TextTokenizer(path, rules)
    with pytest.raises(TinygenError, match=f"'encode' maps to '{ordinary}', an ordinary token"):
        Encoder.load(path, rules)
