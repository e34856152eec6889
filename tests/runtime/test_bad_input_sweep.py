"""Mistakes a new user makes, each answered in one line (or done right), never a traceback:
a model folder's config that is no JSON object, a delimiter or curate input that is not
UTF-8, a damaged settings file beside --to-file's texts, `-n` texts piped to `head`."""

import io
import json
import re

import pytest

from tinygen import ModelFormatError, TextGenerator, TinygenError
from tinygen.manifest import load_manifest

from runtime_cli import ClosedPipe, run

GPT2_CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64,
               "vocab_size": 320, "eos_token_id": 0}


@pytest.fixture(scope="module")
def gen():
    return TextGenerator(device="cpu")  # the embedded tiny model


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_a_config_that_is_no_json_object_is_named(tmp_path, name):
    """A list in an optimum folder's config.json or generation_config.json was an
    AttributeError ('list' object has no attribute 'get')."""
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG))
    (tmp_path / name).write_text("[1]")
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(tmp_path / name))}: expected a "
                                               f"JSON object$"):
        load_manifest(tmp_path)
    assert run(["Hi", "--model", str(tmp_path)]) == \
        (2, "", f"tinygen: error: {tmp_path / name}: expected a JSON object\n")


def test_bad_end_ids_name_the_file_they_came_from(tmp_path):
    """generation_config.json's eos_token_id wins over config.json's: its error
    named config.json."""
    (tmp_path / "config.json").write_text(json.dumps(GPT2_CONFIG))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, "x"]}))
    generation = re.escape(str(tmp_path / "generation_config.json"))
    with pytest.raises(ModelFormatError, match=f"^{generation}: token ids must be integers"):
        load_manifest(tmp_path)
    (tmp_path / "generation_config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({**GPT2_CONFIG, "eos_token_id": "0"}))
    with pytest.raises(ModelFormatError, match=f"^{re.escape(str(tmp_path / 'config.json'))}: "
                                               f"token ids must be"):
        load_manifest(tmp_path)


def test_a_delimiter_that_is_not_utf8_is_refused_before_the_file_is_made(gen, tmp_path):
    """A lone surrogate was a UnicodeEncodeError from writing the settings, with the texts'
    file already made (empty)."""
    path = tmp_path / "texts.txt"
    with pytest.raises(TinygenError, match=r"^delimiter is not UTF-8 text \(at character 1\); "
                                           r"give it as UTF-8$"):
        gen.generate_to_file(path, "Hi", delimiter="=\ud800=", max_new_tokens=2)
    assert not path.exists()


def test_a_settings_file_with_a_negative_seed_is_damaged(gen, tmp_path):
    """Its seed was taken as the caller's: 'seed must be >= 0, got -5' (--seed on the command
    line), for a seed the user never gave."""
    path = tmp_path / "texts.txt"
    gen.generate_to_file(path, "Hi", n=2, seed=1, max_new_tokens=2)
    sidecar = tmp_path / "texts.txt.tinygen.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "seed": -5}))
    with pytest.raises(TinygenError, match="texts.txt.tinygen.json is damaged; delete it"):
        gen.generate_to_file(path, "Hi", n=4, resume=True, max_new_tokens=2)


def test_texts_piped_to_head_still_report_their_seeds(gen):
    """A reader that left during the first batch got no seeds (one streamed text gets its own)."""
    [want] = gen.generate("Once", seed=9, max_new_tokens=3)
    code, out, err = run(["Once", "-n", "3", "--seed", "9", "--max-new-tokens", "3"],
                         out=ClosedPipe())
    assert (code, out, err) == (0, f"Once{want}\n", "seed: 9\n")
    # A drawn seed too: the first text's, which remakes what the reader saw.
    code, out, err = run(["Once", "-n", "3", "--max-new-tokens", "3"], out=ClosedPipe())
    [want] = gen.generate("Once", seed=int(err.removeprefix("seed: ")), max_new_tokens=3)
    assert (code, out) == (0, f"Once{want}\n")


@pytest.mark.parametrize("stdin,message", [
    # a C.UTF-8 locale passes bytes that are not UTF-8 on as surrogates: a TypeError in the
    # tokenizer
    (lambda: io.StringIO("e 1\nab\udcffc\n"),
     "the edit is not UTF-8 text (at character 2); give it as UTF-8"),
    # a strict stdin fails on them: a UnicodeDecodeError from readline
    (lambda: io.TextIOWrapper(io.BytesIO(b"\xff\n"), encoding="utf-8"),
     "the input on stdin is not UTF-8 text; give it as UTF-8"),
])
def test_curate_input_that_is_not_utf8_is_one_line(monkeypatch, stdin, message):
    monkeypatch.setattr("sys.stdin", stdin())
    code, _, err = run(["curate", "Hi", "-k", "2", "--max-new-tokens", "3", "--seed", "1"])
    assert (code, err) == (2, f"tinygen: error: {message}\n")
