"""The embedded tiny model ends a text at either of SmolLM2's end tokens, <|endoftext|> and
<|im_end|>: neither is banned (test_embedded_model.py), so both must be in its manifest's
eos_token_ids, or the one left out would be generated as text."""

from __future__ import annotations

import json

import pytest

from tinygen import TextGenerator
from tinygen.manifest import load_manifest
from tinygen_tinymodel import model_dir

END_TOKENS = ("<|endoftext|>", "<|im_end|>")


def _ids(tokens) -> list[int]:
    tokenizer = json.loads((model_dir() / "tokenizer.json").read_text(encoding="utf-8"))
    ids = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    return [ids[t] for t in tokens]


def test_the_manifest_lists_both_end_tokens():
    assert _ids(END_TOKENS) == [0, 2]
    assert list(load_manifest(model_dir()).eos_token_ids) == _ids(END_TOKENS)


@pytest.mark.parametrize("token", END_TOKENS)
def test_either_end_token_ends_the_text(token):
    [end_id] = _ids([token])
    text = TextGenerator().generate("Once upon a time", seed=1, max_new_tokens=8,
                                    logit_bias={end_id: 100.0})[0]
    assert text.finish_reason == "eos"
    assert text.token_ids == () and str(text) == ""  # the end token is not part of the text
