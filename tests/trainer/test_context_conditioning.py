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
