"""The tokenizer's view of output text: which tokens exclude_chars bans, and how a
continuation is decoded after its prompt."""

from __future__ import annotations

from dataclasses import replace

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from tinygen import TextGenerator
from tinygen.replacements import Replacements
from tinygen.tokenizer import TextTokenizer

import tinygen.tokenizer as tokenizer_module


@pytest.fixture(scope="module")
def bpe_path(tiny_gpt2_dir, tmp_path_factory):
    """The tiny GPT-2's byte-level BPE (<|endoftext|> special), with a special token that
    has a replacement (<|url|>) and a plain added token (<fox>)."""
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tok = Tokenizer.from_file(str(tiny_gpt2_dir / "tokenizer.json"))
    tok.add_special_tokens(["<|url|>"])
    tok.add_tokens([AddedToken("<fox>", special=False)])
    tok.save(str(path))
    return path


# -- exclude_chars judges tokens by the text they show --------------------------------


def test_exclude_chars_never_bans_a_special_token_that_shows_nothing(bpe_path):
    tok = TextTokenizer(bpe_path)
    eos = tok.tokenizer.token_to_id("<|endoftext|>")
    for chars in ("x", "e", "<|>", "endoftx"):
        assert eos not in tok.ids_for_chars(chars), chars
    banned = tok.ids_for_chars("x")
    # ordinary tokens are still judged by their text
    assert tok.tokenizer.token_to_id("x") in banned
    shown = [tok.tokenizer.decode([i], skip_special_tokens=True) for i in range(tok.vocab_size)]
    assert all("x" not in shown[i] for i in range(tok.vocab_size) if i not in banned)
    # a non-special added token shows its text, so it is banned by it
    fox = tok.tokenizer.token_to_id("<fox>")
    assert fox in banned and fox not in tok.ids_for_chars("q")
    # exclude_strings still finds special tokens by name
    assert tok.ids_for_strings(["<|endoftext|>"]) == [eos]


def test_exclude_chars_judges_a_replacement_token_by_its_shown_text(bpe_path):
    tok = TextTokenizer(bpe_path, Replacements(decode={"<|url|>": "[link]"}))
    url = tok.tokenizer.token_to_id("<|url|>")
    assert url in tok.ids_for_chars("k")  # "[link]" is shown
    assert url not in tok.ids_for_chars("|")  # "<|url|>" is not
    assert url not in tok.ids_for_chars("u")


def banned_by_definition(token_bytes, chars: str) -> set[int]:
    """exclude_chars's rule, one character at a time: a token holds the character's bytes,
    lies inside them, ends with their start or begins with their end; for U+FFFD, also a
    token that is no UTF-8 by itself."""
    banned = set()
    for i, tb in enumerate(token_bytes):
        for ch in chars:
            b = ch.encode("utf-8")
            cuts = range(1, len(b))
            if tb and (b in tb or len(b) > 1 and (tb in b or any(tb.endswith(b[:k]) for k in cuts)
                                                  or any(tb.startswith(b[k:]) for k in cuts))):
                banned.add(i)
        if "\ufffd" in chars:
            try:
                tb.decode("utf-8")
            except UnicodeDecodeError:
                banned.add(i)
    return banned


@pytest.mark.parametrize("chars", ["e", "eE\n", "é", "🙂o", "\ufffd", "—’€", "日本語の文章", "ÿĀ",
                                   "".join(chr(c) for c in range(0x4E00, 0x4E08))])
def test_exclude_chars_bans_what_the_rule_says_on_the_embedded_vocabulary(chars):
    tok = TextGenerator().tokenizer
    assert set(tok.ids_for_chars(chars)) == banned_by_definition(tok.shown_bytes, chars)


def test_exclude_chars_keeps_the_embedded_models_eos():
    gen = TextGenerator()
    eos = set(gen.manifest.eos_token_ids)
    assert eos and not eos & set(gen.tokenizer.ids_for_chars("x"))
    assert not eos & set(gen.tokenizer.ids_for_chars("endoftx<|>"))
    # end to end: EOS forced by a bias still ends the text with exclude_chars set
    [text] = gen.generate("Once upon a time", do_sample=False, max_new_tokens=4, exclude_chars="x",
                          logit_bias={min(eos): 1000.0})
    assert text.finish_reason == "eos"


# -- a continuation decodes as part of its prompt's text ------------------------------

LLAMA2_DECODER = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                    decoders.Fuse(), decoders.Strip(" ", 1, 0)])


def _metaspace(tmp_path, decoder) -> TextTokenizer:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "▁Hello": 3, "▁world": 4, "▁again": 5, "Hello": 6,
             "▁Once": 7, "!": 8}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoder
    tok.add_special_tokens(["<s>", "</s>"])
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return TextTokenizer(path)


def _streamed(tok: TextTokenizer, prompt_ids, ids) -> str:
    decoder = tok.stream_decoder(prompt_ids)
    return "".join(decoder.step(i) for i in ids)


@pytest.mark.parametrize("decoder", [decoders.Metaspace(), LLAMA2_DECODER], ids=["metaspace", "llama2"])
def test_metaspace_continuation_keeps_its_leading_space(tmp_path, decoder):
    tok = _metaspace(tmp_path, decoder)
    prompt = tok.encode("Hello")
    assert tok.tokenizer.decode(prompt) == "Hello"
    ids = [4, 5, 8]  # ▁world ▁again !
    full = tok.tokenizer.decode(prompt + ids)
    assert full == "Hello world again!"
    assert "Hello" + _streamed(tok, prompt, ids) == full
    # a text that starts at BOS has no leading space, as a full decode
    assert _streamed(tok, [1], [7, 4]) == tok.tokenizer.decode([1, 7, 4]) == "Once world"
    # EOS mid-prompt is skipped; no prompt: decoded as a text of its own (the default)
    assert _streamed(tok, [1, 3, 2], [4]) == tok.tokenizer.decode([1, 3, 2, 4])[len("Hello"):]
    assert _streamed(tok, [], ids) == _streamed(tok, None, ids) == tok.decode(ids) == "world again!"


def test_priming_leaves_byte_level_text_unchanged(bpe_path):
    """GPT-2 style byte-level BPE, and the embedded model's tokenizer: the same text,
    split anywhere between prompt and continuation, even inside a character."""
    for tok in (TextTokenizer(bpe_path), TextGenerator().tokenizer):
        for text in ["Once upon a time, café 🙂 naïve", " crème brûlée — ünïcödé", "🙂🙂 x"]:
            ids = tok.encode(text)
            for k in range(len(ids) + 1):
                assert _streamed(tok, ids[:k], ids[k:]) == tok.decode(ids[k:]), (text, k)
                prompt_text = tok.tokenizer.decode(ids[:k], skip_special_tokens=True)
                if "\ufffd" not in prompt_text:  # not inside a character
                    assert prompt_text + _streamed(tok, ids[:k], ids[k:]) == text


def test_a_primed_stream_that_fails_starts_over_unprimed(tmp_path, monkeypatch):
    tok = _metaspace(tmp_path, decoders.Metaspace())
    real = tokenizer_module.DecodeStream

    class Fussy:
        """A stream whose prompt + text decoding is not prefix-stable."""

        def __init__(self, ids=None, skip_special_tokens=False):
            self.primed, self.inner = bool(ids), real(skip_special_tokens=skip_special_tokens)

        def step(self, tokenizer, ids):
            if self.primed:
                raise Exception("Invalid prefix encountered")
            return self.inner.step(tokenizer, ids)

    monkeypatch.setattr(tokenizer_module, "DecodeStream", Fussy)
    assert _streamed(tok, tok.encode("Hello"), [4, 5]) == "world again"


def test_generated_text_continues_its_prompt_with_a_metaspace_tokenizer(exported_llama_dir, tmp_path):
    """generate, stream and the serving engine prime each text's decoder with its prompt:
    prompt + text is the whole sequence decoded at once (the space after the prompt kept)."""
    import asyncio
    import shutil

    from tinygen.serving.engine import Engine

    model_dir = shutil.copytree(exported_llama_dir, tmp_path / "model")
    gen = TextGenerator(model_dir)
    size = gen.manifest.vocab_size
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, size):  # words that start one ("▁w5") or go on from the last ("w6")
        vocab[f"▁w{i}" if i % 2 else f"w{i}"] = i
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = LLAMA2_DECODER
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(model_dir / gen.manifest.tokenizer_file))
    replace(gen.manifest, files=None).save(model_dir)  # the export's record: another tokenizer now
    gen = TextGenerator(model_dir)

    ids = gen.tokenizer.encode("w3 w5")
    assert [gen.tokenizer.tokenizer.id_to_token(i) for i in ids] == ["▁w3", "▁w5"]
    prompt = gen.tokenizer.tokenizer.decode(ids)
    texts = gen.generate(prompt, n=3, seed=7, max_new_tokens=12, stop_at_eos=False)
    for text in texts:
        assert prompt + text == gen.tokenizer.tokenizer.decode(ids + list(text.token_ids))
    assert any(text.startswith(" ") for text in texts)  # a new word right after the prompt
    streamed = "".join(gen.stream(prompt, seed=texts[0].seed, max_new_tokens=12, stop_at_eos=False))
    assert streamed == texts[0]

    engine = Engine(gen)

    async def served():
        handle = engine.submit(prompt, n=3, seed=7, max_new_tokens=12, stop_at_eos=False)
        return await handle.completions()

    try:
        assert [str(t) for t in asyncio.run(served())] == [str(t) for t in texts]
    finally:
        engine.close()


def test_a_long_text_encodes_as_a_short_one_does():
    """Long texts go through encode_batch (it lets other threads run); the ids must not change."""
    tok = TextGenerator().tokenizer
    text = "Once upon a time, a fox met a crow.\n" * 400  # past the 4096-character switch
    assert len(text) > 4096
    assert tok.encode(text) == tok.tokenizer.encode(text).ids
    assert tok.encode(text)[:9] == tok.encode("Once upon a time, a fox met a crow.\n")[:9]


# -- token ids looked up one at a time -------------------------------------------------

def test_token_ids_agree_with_the_whole_vocabulary(bpe_path):
    tok = Tokenizer.from_file(str(bpe_path))
    whole = tok.get_vocab(with_added_tokens=True)
    ids = tokenizer_module.TokenIds(tok)
    assert len(ids) == len(whole) and set(ids) == set(whole)
    assert all(ids[token] == i for token, i in whole.items())  # special and plain added too
    assert ids["<|url|>"] == whole["<|url|>"] and "<fox>" in ids
    assert "<|nope|>" not in ids
    with pytest.raises(KeyError):
        ids["<|nope|>"]


# -- a text that ends inside a character ----------------------------------------------


def _incomplete_with_space(tok: TextTokenizer) -> int:
    """A token that is a space and the first bytes of a character, such as " \\xe2\\x80"."""
    for i, b in enumerate(tok.token_bytes):
        if len(b) > 1 and b.startswith(b" ") and b[1] >= 0xC0:
            try:
                b.decode("utf-8")
            except UnicodeDecodeError:
                return i
    raise AssertionError("no such token")


def test_a_text_ending_inside_a_character_keeps_what_its_last_token_held():
    """The stream holds an incomplete character's bytes back; when the text ends there,
    they show as a full decode shows them (\\ufffd), with the space that came with them."""
    gen = TextGenerator()
    tok = gen.tokenizer
    partial = _incomplete_with_space(tok)
    whole = tok.tokenizer.decode([partial])
    assert whole.startswith(" ") and whole.endswith("\ufffd")
    assert tok.decode([partial]) == whole
    assert tok.decode(tok.encode("café") + [partial]) == "café" + whole
    for max_new in (1, 3):  # ends at its length right after the token, or later
        bias = {partial: 1000.0} if max_new == 1 else {}
        [text] = gen.generate("Once upon a time", do_sample=False, max_new_tokens=max_new,
                              logit_bias=bias)
        assert text == tok.tokenizer.decode(list(text.token_ids), skip_special_tokens=True)
    [text] = gen.generate("Once upon a time", do_sample=False, max_new_tokens=1,
                          logit_bias={partial: 1000.0})
    assert text == whole and text.finish_reason == "length"
    pieces = list(gen.stream("Once upon a time", do_sample=False, max_new_tokens=1,
                             logit_bias={partial: 1000.0}))
    assert "".join(pieces) == whole


def test_a_replacement_inside_a_character_comes_after_the_bytes_before_it(bpe_path):
    """A replacement token between the bytes of one character: the bytes before it show first
    (as \\ufffd, as a full decode shows them), and those after it cannot complete the character.
    It was put first ("<url>é"), then the character made whole around it."""
    tok = TextTokenizer(bpe_path, Replacements(decode={"<|url|>": "<url>"}))
    url = tok.tokenizer.token_to_id("<|url|>")
    first, second = tok.tokenizer.token_to_id("Ã"), tok.tokenizer.token_to_id("©")  # é's two bytes
    assert tok.tokenizer.decode([first, second]) == "é"
    the = tok.encode(" the")
    ids = the + [first, url, second] + the + [first, second, url] + the + [first, url]
    want = " the\ufffd<url>\ufffd the" + "é<url>" + " the\ufffd<url>"
    assert tok.decode(ids) == want
    for prompt in (None, tok.encode("Once")):
        decoder = tok.stream_decoder(prompt)
        assert "".join(decoder.step(i) for i in ids) + decoder.finish() == want
        decoder = tok.stream_decoder(prompt)
        assert "".join(decoder.step(i) for i in [first, url, first]) + decoder.finish() == \
            "\ufffd<url>\ufffd"
