"""Byte-level BPE from scratch, replacement rules, and the `tokenizer` / `encode` commands."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer

from tinygen.errors import TinygenError
from tinygen.replacements import EncodeRule, Replacements
from tinygen_trainer.cli import main
from tinygen_trainer.data import Encoder, TokenDataset
from tinygen_trainer.data.encoder import find_eos_id
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

CORPUS = [
    "Once upon a time there was a little model that wanted to write stories. "
    "See https://example.com/stories?id=1 for more, or http://old.example.org/x.",
    "The quick brown fox jumps over the lazy dog. Naïve café owners serve crème brûlée 🙂.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.",
] * 20
URL_RULES = Replacements(encode=(EncodeRule(r"https?://\S+", "<|url|>", regex=True),),
                         decode={"<|url|>": "<url>"}, ban=("<|url|>",))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS), encoding="utf-8")
    return path


def test_byte_level_bpe_round_trips_anything():
    tok = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=350, special_tokens=("<|user|>",),
                                                  progress=False))
    assert tok.token_to_id("<|endoftext|>") == 0
    assert tok.token_to_id("<|user|>") == 1
    assert 300 < tok.get_vocab_size() <= 350
    for text in ["The quick brown fox 🙂", "日本語のテキスト", "tabs\tand\nnewlines ", "ÿ\x00\x7f"]:
        assert tok.decode(tok.encode(text).ids) == text  # bytes never seen still encode
    assert tok.encode("hello <|user|> there").ids.count(1) == 1  # a special token is one id
    assert len(tok.encode("the question").ids) < len("the question")  # merges were learned


def test_replacements_become_special_tokens(tmp_path):
    config = TokenizerConfig(vocab_size=320, replacements=URL_RULES, progress=False)
    tok = train_tokenizer(CORPUS, config)
    url_id = tok.token_to_id("<|url|>")
    assert url_id is not None
    # no merge was spent on URL fragments
    assert not any("example" in token for token in tok.get_vocab())
    path = save_tokenizer(tok, tmp_path / "tokenizer.json", URL_RULES)
    saved = json.loads((tmp_path / "replacements.json").read_text())
    assert saved == {"format_version": 1,
                     "encode": [{"pattern": r"https?://\S+", "regex": True, "token": "<|url|>"}],
                     "decode": {"<|url|>": "<url>"}, "ban": ["<|url|>"]}
    encoder = Encoder.load(path, Replacements.load(tmp_path / "replacements.json"))
    dataset = TokenDataset.from_documents(["visit https://tinygen.dev/docs now"], encoder,
                                          progress=False)
    ids = dataset.tokens.tolist()
    assert ids.count(url_id) == 1
    assert tok.decode(ids, skip_special_tokens=False).startswith("visit <|url|> now")


def test_bad_options():
    with pytest.raises(TinygenError, match=r"vocab_size must be at least 258 \(256 bytes \+ 2 "
                                           r"special tokens\), got 100"):
        TokenizerConfig(vocab_size=100, special_tokens=("<|a|>",))
    with pytest.raises(TinygenError, match=r"at least 257 \(256 bytes \+ 1 special token\), got 3"):
        TokenizerConfig(vocab_size=3)
    with pytest.raises(TinygenError, match="special tokens must be non-empty"):
        TokenizerConfig(special_tokens=("",))
    with pytest.raises(TinygenError, match="empty corpus"):
        train_tokenizer(["  ", ""], TokenizerConfig(vocab_size=300, progress=False))
    with pytest.raises(TinygenError, match="a replacement to <\\|endoftext\\|> would end a document"):
        TokenizerConfig(replacements=Replacements(encode=(EncodeRule("cat", "<|endoftext|>"),)))
    with pytest.raises(TinygenError, match="banning <\\|endoftext\\|> would keep the model from"):
        TokenizerConfig(replacements=Replacements(ban=("<|endoftext|>",)))


# -- the commands -------------------------------------------------------------------

def test_tokenizer_and_encode_commands(tmp_path, corpus_file, capsys):
    out = tmp_path / "tok" / "tokenizer.json"
    rc = main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "320",
               "--special-token", "<|user|>", "--replace-regex", r"https?://\S+", "<|url|>",
               "--decode", "<|url|>", "<url>", "--ban", "<|url|>"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "replaced" not in err
    tok = Tokenizer.from_file(str(out))
    assert tok.token_to_id("<|user|>") is not None and tok.token_to_id("<|url|>") is not None
    assert Replacements.load(out.parent / "replacements.json") == URL_RULES

    cache = tmp_path / "corpus.tokens"
    rc = main(["encode", str(corpus_file), "--tokenizer", str(out), "-o", str(cache), "--quiet"])
    assert rc == 0
    assert "tokens in 1 document (" in capsys.readouterr().err
    # replacements.json beside the tokenizer was applied: every URL is one token
    encoder = Encoder.load(out, Replacements.load(out.parent / "replacements.json"))
    dataset = TokenDataset.load(cache, encoder)
    assert dataset.tokens.tolist().count(tok.token_to_id("<|url|>")) == 40
    # trained again over it: said, since the cache above was made with the one replaced
    assert main(["tokenizer", str(corpus_file), "-o", str(tmp_path / "again.json"),
                 "--vocab-size", "300"]) == 0
    assert "replaced" not in capsys.readouterr().err
    assert main(["tokenizer", str(corpus_file), "-o", str(tmp_path / "again.json"),
                 "--vocab-size", "300"]) == 0
    assert capsys.readouterr().err.endswith(
        "note: it replaced the tokenizer that was there; token caches and models made with that "
        "one need it, not this one\n")


def test_command_errors_are_one_line(tmp_path, corpus_file, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n", encoding="utf-8")
    out = str(tmp_path / "t.json")
    assert main(["tokenizer", str(empty), "-o", out, "--vocab-size", "300"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygen-train: error: ") and "empty corpus" in err
    assert err.count("\n") == 1

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe")
    assert main(["tokenizer", str(bad), "-o", str(tmp_path / "t.json"), "--vocab-size", "300"]) == 2
    assert "bad.txt: not UTF-8 at byte 3" in capsys.readouterr().err
    assert main(["tokenizer", str(bad), "-o", str(tmp_path / "t.json"), "--vocab-size", "300",
                 "--errors", "replace"]) == 0
    capsys.readouterr()

    assert main(["tokenizer", str(corpus_file), "--replace-regex", "(unclosed", "<|x|>"]) == 2
    assert "not a valid regex" in capsys.readouterr().err
    assert main(["tokenizer", str(corpus_file), "--replace-regex", "a*", "<|x|>"]) == 2
    assert "'a*' matches the empty string" in capsys.readouterr().err

    # a cache encoded with one tokenizer, read with another
    cache = tmp_path / "c.tokens"
    assert main(["encode", str(corpus_file), "--tokenizer", out, "-o", str(cache), "--quiet"]) == 0
    other = save_tokenizer(train_tokenizer(CORPUS, TokenizerConfig(vocab_size=290, progress=False)),
                           tmp_path / "other" / "tokenizer.json")
    with pytest.raises(TinygenError, match="different tokenizer"):
        TokenDataset.load(cache, Encoder.load(other))
    assert main(["encode", str(corpus_file), "--tokenizer", str(tmp_path / "nope.json"),
                 "-o", str(cache)]) == 2
    assert "tokenizer not found" in capsys.readouterr().err


def test_output_folders(tmp_path, corpus_file, capsys):
    """-o FOLDER (existing, or written with a trailing slash) holds tokenizer.json; encode's -o
    must name a file, and says so before encoding (a traceback, after it, before)."""
    folder = tmp_path / "tok"
    folder.mkdir()
    assert main(["tokenizer", str(corpus_file), "-o", str(folder), "--vocab-size", "300"]) == 0
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size() == 300
    assert main(["tokenizer", str(corpus_file), "-o", f"{tmp_path / 'new'}/", "--vocab-size", "300"]) == 0
    assert (tmp_path / "new" / "tokenizer.json").is_file()
    capsys.readouterr()
    assert main(["encode", str(corpus_file), "--tokenizer", str(folder / "tokenizer.json"),
                 "-o", str(folder), "--quiet"]) == 2
    assert capsys.readouterr().err == (f"tinygen-train: error: -o {folder} is a folder; give the "
                                       f"token cache's file path, e.g. {folder / 'train.tokens'}\n")
    # A file where a folder should be: said before the corpus is read (it does not exist
    # here), not after the work.
    missing = str(tmp_path / "no-such-corpus")
    for target, argv in ((corpus_file / "x.tokens", ["encode", missing, "--tokenizer",
                                                     str(folder / "tokenizer.json")]),
                         (corpus_file / "tok.json", ["tokenizer", missing, "--vocab-size", "300"])):
        assert main([*argv, "-o", str(target)]) == 2
        assert capsys.readouterr().err == (f"tinygen-train: error: cannot write {target}: "
                                           f"{corpus_file} is a file, not a folder\n")


@pytest.mark.parametrize("flags, message", [
    (["--replace", "", "<|x|>"], "--replace '' '<|x|>': give a non-empty TEXT and TOKEN"),
    (["--replace", "x", ""], "--replace 'x' '': give a non-empty TEXT and TOKEN"),
    (["--replace-regex", "", "<|x|>"], "--replace-regex '' '<|x|>': give a non-empty REGEX and "
                                       "TOKEN"),
    (["--decode", "", "x"], "--decode '': give a non-empty TOKEN"),
    (["--ban", ""], "--ban '': give a non-empty TOKEN"),
    # The last TEXT silently replaced the others.
    (["--decode", "<|u|>", "a", "--decode", "<|u|>", "b"],
     "--decode gives '<|u|>' twice; give each token one TEXT"),
])
def test_an_empty_replacement_flag_is_named(tmp_path, corpus_file, capsys, flags, message):
    """An empty text or token was said in replacements.json's terms ("command line:
    'encode[0].token' must be a non-empty string"), or as a plain-word special token ''."""
    out = tmp_path / "tok"
    assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300", *flags]) == 2
    assert capsys.readouterr().err == f"tinygen-train: error: {message}\n"
    assert not out.exists()


def test_a_tokenizer_is_not_written_into_a_model_folder(tmp_path, corpus_file, capsys):
    """-o MODEL (a transformers folder, a run's output, an export) replaced the model's own
    tokenizer.json, the one its embeddings learned, with a note after the fact."""
    for name, marker in (("model", "config.json"), ("export", "tinygen.json")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / marker).write_text("{}", encoding="utf-8")
        (folder / "tokenizer.json").write_text("the model's own", encoding="utf-8")
        for out in (folder, folder / "tokenizer.json"):
            assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300"]) == 2
            assert capsys.readouterr().err == (
                f"tinygen-train: error: {folder} holds a model ({marker}): a tokenizer written "
                f"there would be taken for the model's own; write it to another folder\n")
        assert (folder / "tokenizer.json").read_text(encoding="utf-8") == "the model's own"


def test_a_tokenizer_folder_given_as_tokenizer_says_which_file(tmp_path, corpus_file, capsys):
    """`tokenizer -o tok` writes tok/tokenizer.json; `--tokenizer tok` then said 'tokenizer not
    found: tok' of a folder that is there."""
    folder = tmp_path / "tok"
    assert main(["tokenizer", str(corpus_file), "-o", str(folder), "--vocab-size", "300"]) == 0
    capsys.readouterr()
    expected = (f"tinygen-train: error: tokenizer {folder} is a folder; give the tokenizer file "
                f"itself, e.g. {folder / 'tokenizer.json'}\n")
    for argv in (["encode", str(corpus_file), "-o", str(tmp_path / "c.tokens"), "--quiet"],
                 ["train", str(corpus_file), "--preset", "cpu-tiny", "-o", str(tmp_path / "run"),
                  "--steps", "1", "--quiet"]):
        assert main([*argv, "--tokenizer", str(folder)]) == 2
        assert capsys.readouterr().err == expected
    assert not (tmp_path / "c.tokens").exists() and not (tmp_path / "run").exists()


def test_a_plain_word_is_refused_as_a_special_token():
    """It would be matched inside other words ("the" in "there") and vanish when decoded."""
    for word in ("the", "end 1"):
        with pytest.raises(TinygenError, match=f"special token '{word}' is a plain word"):
            TokenizerConfig(vocab_size=300, special_tokens=("<|a|>", word))
    with pytest.raises(TinygenError, match="special token 'LINK' is a plain word"):  # --replace's too
        TokenizerConfig(vocab_size=300, replacements=Replacements(encode=(EncodeRule("http", "LINK"),)))
    for marker in ("<|user|>", "[SEP]", "__eou__", "###"):
        assert marker in TokenizerConfig(vocab_size=300, special_tokens=(marker,)).all_special_tokens()


def test_an_ordinary_token_is_refused_as_the_end_token(tmp_path):
    tok = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300, special_tokens=("<|user|>",),
                                                  progress=False))
    path = save_tokenizer(tok, tmp_path / "tokenizer.json")
    assert find_eos_id(tok, "<|user|>") == tok.token_to_id("<|user|>")  # special: taken
    with pytest.raises(TinygenError, match=r"--eos-token '\.' is an ordinary token, which the text "
                                           r"itself makes; name a special token: <\|endoftext\|>, <\|user\|>"):
        Encoder.load(path, eos_token=".")


def test_an_output_that_is_an_input_is_refused(tmp_path, corpus_file, capsys):
    """`encode train.txt -o train.txt` replaced the corpus with its tokens, `-o tokenizer.json`
    the tokenizer; a file written into a corpus folder was read as text by the next run."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(corpus_file.read_bytes())
    tok = tmp_path / "tok" / "tokenizer.json"
    assert main(["tokenizer", str(corpus), "-o", str(tok), "--vocab-size", "300"]) == 0
    before = corpus.read_bytes(), tok.read_bytes()
    capsys.readouterr()
    for target in (corpus, tok):
        assert main(["encode", str(corpus), "--tokenizer", str(tok), "-o", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err == (f"tinygen-train: error: {target} is one of this command's inputs and "
                       f"would be overwritten; write to another path\n")
    records = tmp_path / "records.json"  # a tokenizer -o FILE.json that is the corpus
    records.write_text("some text to train on\n", encoding="utf-8")
    assert main(["tokenizer", str(records), "-o", str(records), "--vocab-size", "300"]) == 2
    assert "is one of this command's inputs" in capsys.readouterr().err
    assert (corpus.read_bytes(), tok.read_bytes()) == before
    assert records.read_text(encoding="utf-8") == "some text to train on\n"

    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "a.txt").write_bytes(corpus_file.read_bytes())
    for argv in (["encode", str(folder), "--tokenizer", str(tok), "-o", str(folder / "x.tokens")],
                 ["tokenizer", str(folder), "-o", str(folder), "--vocab-size", "300"]):
        assert main(argv) == 2
        assert "inside the corpus folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]
    # hidden paths are not read as corpus, so they may hold outputs
    assert main(["encode", str(folder), "--tokenizer", str(tok), "-o",
                 str(folder / ".cache" / "x.tokens"), "--quiet"]) == 0


def test_rules_and_fields_of_an_earlier_tokenizer_are_not_left_beside_a_new_one(tmp_path, capsys):
    """A tokenizer retrained into its folder without --replace or --field kept the old
    replacements.json and fields.json beside it: encode then refused the new tokenizer (or
    applied rules it was not trained with)."""
    out = tmp_path / "tok"
    corpus_file = tmp_path / "records.jsonl"  # records: --field is refused on plain text
    corpus_file.write_text("".join(json.dumps({"title": "t", "body": doc, "text": doc}) + "\n"
                                   for doc in CORPUS), encoding="utf-8")
    assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300",
                 "--replace-regex", r"https?://\S+", "<|url|>", "--field", "title,body"]) == 0
    capsys.readouterr()
    for name, argv in (("replacements.json", ["--field", "title,body"]), ("fields.json", [])):
        assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300", *argv]) == 2
        assert capsys.readouterr().err == (f"tinygen-train: error: {out / name} is left from another "
                                           f"tokenizer and would be read with this one; delete it, "
                                           f"or write the tokenizer to another folder\n")
        (out / name).unlink()
    assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json"]
    assert main(["encode", str(corpus_file), "--tokenizer", str(out / "tokenizer.json"), "-o",
                 str(tmp_path / "c.tokens"), "--quiet"]) == 0


@pytest.mark.parametrize("pattern, problem", [
    ("(", "is not a valid regex (missing ), unterminated subpattern at position 0)"),
    ("a*", "matches the empty string; make it match at least one character (+ instead of *)"),
])
def test_a_bad_replace_regex_is_named_by_its_flag(corpus_file, tmp_path, capsys, pattern, problem):
    """The error named the rule's place in replacements.json ('encode[0].pattern'), a file the
    user never wrote: it names the flag and the pattern typed."""
    assert main(["tokenizer", str(corpus_file), "-o", str(tmp_path / "tok"),
                 "--replace-regex", pattern, "<|x|>"]) == 2
    expected = f"tinygen-train: error: --replace-regex {pattern!r} {problem}\n"
    assert capsys.readouterr().err == expected


def test_a_bad_regex_in_a_replacements_file_names_the_file(corpus_file, tmp_path, capsys):
    tok = save_tokenizer(train_tokenizer(CORPUS, TokenizerConfig(vocab_size=300, progress=False)),
                         tmp_path / "tokenizer.json")
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"encode": [{"pattern": "(", "regex": True, "token": "<|x|>"}]}))
    assert main(["encode", str(corpus_file), "--tokenizer", str(tok), "--replacements", str(rules),
                 "-o", str(tmp_path / "c.tokens")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tinygen-train: error: {rules}: 'encode[0].pattern' '(' "
                          f"is not a valid regex")


def test_a_vocabulary_the_corpus_cannot_fill_is_said(corpus_file, tmp_path, capsys):
    """BPE stops when no pair is left to merge: --vocab-size 70000 on a small corpus gave a few
    hundred tokens, silently."""
    assert main(["tokenizer", str(corpus_file), "-o", str(tmp_path / "big"),
                 "--vocab-size", "70000"]) == 0
    size = Tokenizer.from_file(str(tmp_path / "big" / "tokenizer.json")).get_vocab_size()
    lines = capsys.readouterr().err.splitlines()
    assert [line for line in lines if "fewer than" in line] == [
        f"note: the tokenizer has {size} tokens, fewer than the 70000 asked: the corpus holds "
        f"no more pairs to merge (seen at least --min-frequency 2 times)"]
    assert main(["tokenizer", str(corpus_file), "-o", str(tmp_path / "small"),
                 "--vocab-size", "300"]) == 0
    assert "fewer than" not in capsys.readouterr().err


def test_a_kill_before_the_rules_are_written_leaves_no_tokenizer(tmp_path, corpus_file,
                                                                  monkeypatch):
    # tokenizer.json is written last: alone, it would train without the rules its <|url|> needs
    def killed(self, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(Replacements, "save", killed)
    out = tmp_path / "tok" / "tokenizer.json"
    assert main(["tokenizer", str(corpus_file), "-o", str(out), "--vocab-size", "300",
                 "--replace-regex", r"https?://\S+", "<|url|>"]) != 0
    assert not out.exists()
