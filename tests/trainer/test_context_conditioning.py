"""Context conditioning end to end: records with fields -> tokenizer -> train -> export -> generate(context=...)."""

import json

import pytest

from tinygen import TextGenerator, TinygenError
from tinygen_trainer.cli import main as train_cli

BODIES = {
    "alpha": "the quick fox runs over the hill.",
    "beta": "a sleepy cat dreams all day long.",
    "gamma": "small birds sing loudly at dawn.",
    "delta": "cold rain falls on the old town.",
}


@pytest.fixture(scope="module")
def conditioned_model(tmp_path_factory):
    work = tmp_path_factory.mktemp("fields")
    records = work / "records.jsonl"
    with records.open("w") as f:
        for repeat in range(30):
            for title, body in BODIES.items():
                keywords = [title[:2], body.split()[1]]
                f.write(json.dumps({"title": title, "keywords": keywords, "body": body}) + "\n")
    fields = ["--field", "title,keywords,body"]
    assert train_cli(["tokenizer", str(records), "-o", str(work / "tok" / "tokenizer.json"),
                      "--vocab-size", "300", *fields]) == 0
    assert (work / "tok" / "fields.json").is_file()
    assert train_cli(["train", str(records), "--preset", "cpu-tiny", "--tokenizer", str(work / "tok" / "tokenizer.json"),
                      "-o", str(work / "run"), "--steps", "150", "--batch-size", "16", "--block-size", "48",
                      "--line-by-line", "--warmup-steps", "10", "--checkpoint-every", "0", "--quiet", *fields]) == 0
    assert train_cli(["export", str(work / "run"), str(work / "model")]) == 0
    return work / "model"


def test_generate_fills_the_missing_field_from_the_context(conditioned_model):
    gen = TextGenerator(conditioned_model)
    assert gen.fields.names == ("title", "keywords", "body")
    for title, body in BODIES.items():
        keywords = [title[:2], body.split()[1]]
        [text] = gen.generate(context={"title": title, "keywords": keywords}, do_sample=False, max_new_tokens=30)
        assert str(text) == body and text.finish_reason == "eos"


def test_the_prompt_starts_the_target_field(conditioned_model):
    gen = TextGenerator(conditioned_model)
    [text] = gen.generate("small birds", context={"title": "gamma", "keywords": ["ga", "birds"]},
                          target="body", do_sample=False, max_new_tokens=30)
    assert str(text) == " sing loudly at dawn."


def test_context_errors_name_the_problem(conditioned_model, optimum_gpt2_dir):
    gen = TextGenerator(conditioned_model)
    with pytest.raises(TinygenError, match="unknown context field 'author'"):
        gen.generate(context={"author": "x"})
    with pytest.raises(TinygenError, match="field 'body' comes after 'keywords'"):
        gen.generate(context={"body": "x"}, target="keywords")
    with pytest.raises(TinygenError, match="no fields.json"):
        TextGenerator(optimum_gpt2_dir).generate(context={"title": "x"})


def test_context_from_the_cli(conditioned_model, capsys):
    from tinygen.cli import main

    title, body = "beta", BODIES["beta"]
    assert main(["", "--model", str(conditioned_model), "--greedy", "--max-new-tokens", "30",
                 "--context", f"title={title}", "--context", f"keywords={title[:2]},{body.split()[1]}"]) == 0
    assert capsys.readouterr().out == body + "\n"


def test_a_tokenizer_without_the_field_tokens_gets_them_in_training(tmp_path):
    """A tokenizer made without --field (or a finetuned model's own) would train `<|title|>` as
    byte pieces: train adds the field tokens, and the run's model carries fields.json."""
    records = tmp_path / "records.jsonl"
    with records.open("w") as f:
        for repeat in range(20):
            for title, body in BODIES.items():
                f.write(json.dumps({"title": title, "keywords": [title[:2]], "body": body}) + "\n")
    tok = tmp_path / "tok" / "tokenizer.json"
    assert train_cli(["tokenizer", str(records), "--field", "body", "-o", str(tok), "--vocab-size", "300"]) == 0
    fields = ["--field", "title,keywords,body"]
    with pytest.raises(TinygenError, match=r"has no token <\|title\|>: make it with `tinygen-train tokenizer"):
        from tinygen_trainer.commands import encode
        encode.run(encode_args(records, tok, tmp_path / "r.tokens", fields[1]))
    assert train_cli(["train", str(records), "--preset", "cpu-tiny", "--tokenizer", str(tok), "-o",
                      str(tmp_path / "run"), "--steps", "2", "--batch-size", "4", "--block-size", "32",
                      "--checkpoint-every", "0", "--quiet", *fields]) == 0
    assert json.loads((tmp_path / "run" / "fields.json").read_text())["names"] == ["title", "keywords", "body"]
    from tokenizers import Tokenizer
    trained = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    title_id = trained.token_to_id("<|title|>")
    assert title_id is not None and trained.encode("<|title|>alpha").ids[0] == title_id


def encode_args(records, tok, out, field):
    import argparse
    return argparse.Namespace(corpus=[records], field=field, errors="strict", line_by_line=False, output=out,
                              tokenizer=tok, replacements=None, eos_token=None, compress=True, quiet=True)


def test_a_tokenizer_output_without_json_suffix_is_a_folder(tmp_path, monkeypatch):
    text = tmp_path / "a.txt"
    text.write_text("the quick fox runs over the hill. " * 50)
    monkeypatch.chdir(tmp_path)
    assert train_cli(["tokenizer", str(text), "-o", "tok", "--vocab-size", "280",
                      "--replace", "fox", "<|fox|>"]) == 0
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["replacements.json", "tokenizer.json"]
    assert not (tmp_path / "replacements.json").exists()


def test_finetuning_with_new_field_tokens_adds_their_rows_quietly(tmp_path, tiny_gpt2_dir):
    """A finetuned model's tokenizer lacks the field tokens: train adds them and rows for them
    (transformers' mean resizing) without transformers' note, which named an argument that
    this command's user cannot pass and printed even under --quiet."""
    records = tmp_path / "records.jsonl"
    with records.open("w") as f:
        for title, body in BODIES.items():
            f.write(json.dumps({"title": title, "keywords": [title[:2]], "body": body}) + "\n")
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.warning_once.cache_clear()  # said once per process: a test before may have said it
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        assert train_cli(["train", str(records), "--model", str(tiny_gpt2_dir), "-o",
                          str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                          "--block-size", "32", "--checkpoint-every", "0", "--quiet",
                          "--field", "title,keywords,body"]) == 0
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    assert not [m for m in said if "mean_resizing" in m], said
    from transformers import AutoConfig
    from tokenizers import Tokenizer
    trained = Tokenizer.from_file(str(tmp_path / "run" / "tokenizer.json"))
    assert AutoConfig.from_pretrained(tmp_path / "run").vocab_size >= trained.get_vocab_size()
    assert trained.token_to_id("<|keywords|>") is not None


def test_encode_refuses_fields_in_another_order_than_the_tokenizers(tmp_path):
    """Training a cache gives the model the tokenizer's fields.json: records encoded as
    body-then-title would leave generation writing title-then-body prompts, silently."""
    from tinygen_trainer.commands import encode

    records = tmp_path / "records.jsonl"
    with records.open("w") as f:
        for title, body in BODIES.items():
            f.write(json.dumps({"title": title, "keywords": [title[:2]], "body": body}) + "\n")
    tok = tmp_path / "tok" / "tokenizer.json"
    assert train_cli(["tokenizer", str(records), "--field", "title,keywords,body", "-o", str(tok),
                      "--vocab-size", "300"]) == 0
    with pytest.raises(TinygenError, match=r"--field body,title does not follow the fields of .*"
                                           r"title,keywords,body"):
        encode.run(encode_args(records, tok, tmp_path / "r.tokens", "body,title"))
    assert not (tmp_path / "r.tokens").exists()
    # Fewer fields, in the tokenizer's order, are records that lack some: fine.
    assert encode.run(encode_args(records, tok, tmp_path / "r.tokens", "title,body")) == 0
