"""Special tokens stay out of the merges: training never learns `<|`, `|>` or `title` from the
text of replacement, field, end-of-text or user tokens, and each still encodes as one id."""

from __future__ import annotations

import json

from tokenizers import Tokenizer

from tinygen.fields import FieldSchema
from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer.cli import main
from tinygen_trainer.data import Encoder
from tinygen_trainer.tokenizer_training import TokenizerConfig, train_tokenizer

# No `<|`, `|>`, "url", "title" or "body" anywhere: only the special tokens bring them.
SENTENCES = ["see https://example.com/page{i} and http://old.example.org/{i} for more stories",
             "a little fox ran over the hill at dawn, then slept {i} hours"]
URL_RULES = Replacements(encode=(EncodeRule(r"https?://\S+", "<|url|>", regex=True),))


def _learned(tokenizer: Tokenizer, *pieces: str) -> list[str]:
    """Vocabulary entries, the special tokens left out, that hold any of `pieces`."""
    specials = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
    return sorted(token for token in tokenizer.get_vocab()
                  if token not in specials and any(p in token for p in pieces))


def test_replacement_tokens_teach_no_merges():
    docs = [s.format(i=i) for i in range(150) for s in SENTENCES]
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=400, replacements=URL_RULES,
                                                progress=False))
    assert _learned(tok, "<|", "|>", "url") == []  # were ['<|', 'url', '|>', 'Ġ<|']
    # the split that kept them out is the training's; the saved tokenizer has none
    assert json.loads(tok.to_str())["pre_tokenizer"] == {
        "type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    encoder = Encoder(tok, tok.token_to_id("<|endoftext|>"), URL_RULES)
    url = tok.token_to_id("<|url|>")
    ids = encoder.prompt_ids("visit https://tinygen.dev/docs now")
    assert ids.count(url) == 1
    # the text around it encodes as it would alone: the token cut it, nothing else did
    at = ids.index(url)
    assert ids[:at] == tok.encode("visit ").ids and ids[at + 1:] == tok.encode(" now").ids


def test_end_of_text_and_user_tokens_in_the_corpus_teach_no_merges():
    docs = [f"<|user|> how many foxes? {i}<|endoftext|>there are {i} foxes on the hill"
            for i in range(150)]
    tok = train_tokenizer(docs, TokenizerConfig(vocab_size=400, special_tokens=("<|user|>",),
                                                progress=False))
    assert _learned(tok, "<|", "|>", "user", "endoftext") == []
    ids = tok.encode("<|user|> hi<|endoftext|>").ids
    assert ids[0] == tok.token_to_id("<|user|>") and ids[-1] == tok.token_to_id("<|endoftext|>")


def test_field_tokens_of_records_teach_no_merges(tmp_path, capsys):
    records = tmp_path / "records.jsonl"
    with records.open("w", encoding="utf-8") as f:
        for i in range(150):
            f.write(json.dumps({"title": f"fox number {i}",
                                "body": SENTENCES[0].format(i=i)}) + "\n")
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["tokenizer", str(records), "--field", "title,body", "-o", str(out),
                 "--vocab-size", "400", "--replace-regex", r"https?://\S+", "<|url|>"]) == 0
    capsys.readouterr()
    tok = Tokenizer.from_file(str(out))
    assert _learned(tok, "<|", "|>", "url", "title", "body") == []
    text = FieldSchema(("title", "body")).format({"title": "fox", "body": "a hill"})
    ids = tok.encode(text).ids
    assert ids[0] == tok.token_to_id("<|title|>") and ids.count(tok.token_to_id("<|body|>")) == 1
