"""Generation features: replacements, exclusions, logit bias, probabilities, files of texts."""

import json
import re
import shutil

import pytest

from tinygen import ModelFormatError, TextGenerator, TinygenError


@pytest.fixture(scope="module")
def gen(optimum_gpt2_dir):
    return TextGenerator(optimum_gpt2_dir)


def test_token_bytes_rebuild_any_text(gen):
    for text in ["café 🙂 naïve", "Once upon a time", "crème brûlée — ünïcödé"]:
        ids = gen.tokenizer.encode(text)
        assert b"".join(gen.tokenizer.token_bytes[i] for i in ids).decode("utf-8") == text


# U+FFFD: what bytes that are no UTF-8 decode to, which tokens of part of a character make
@pytest.mark.parametrize("chars", ["eE", "é", "🙂o", "\ufffd"])
def test_exclude_chars_guarantees_the_characters_never_appear(gen, chars):
    texts = gen.generate("café 🙂 Once", n=12, seed=0, max_new_tokens=40, temperature=1.5,
                         exclude_chars=chars, stop_at_eos=False)
    free = "".join(gen.generate("café 🙂 Once", n=12, seed=0, max_new_tokens=40, temperature=1.5,
                                stop_at_eos=False))
    assert any(c in free for c in chars)  # the model does produce them when allowed
    for text in texts:
        assert not any(c in text for c in chars)


def test_exclude_ids_and_strings(gen):
    [free] = gen.generate("Once", do_sample=False, max_new_tokens=30, stop_at_eos=False)
    banned = next(t for t in free.token_ids if "\ufffd" not in gen.tokenizer.token_text(t))
    [out] = gen.generate("Once", do_sample=False, max_new_tokens=30, stop_at_eos=False, exclude_ids=[banned])
    assert banned not in out.token_ids
    text = gen.tokenizer.token_text(banned)
    [out2] = gen.generate("Once", do_sample=False, max_new_tokens=30, stop_at_eos=False, exclude_strings=[text])
    assert banned not in out2.token_ids
    with pytest.raises(TinygenError, match="exclude_ids: token id 10000 is outside"):
        gen.generate("Once", exclude_ids=[10000])


def test_logit_bias_forces_a_token(gen):
    [out] = gen.generate("Once", do_sample=False, max_new_tokens=5, logit_bias={42: 1000.0})
    assert out.token_ids == (42,) * 5


def test_probabilities_after_and_before_processors(gen):
    [out] = gen.generate("Once", seed=3, max_new_tokens=12, return_probs=True, top_n=3, top_k=2,
                         stop_at_eos=False)
    assert len(out.token_probs) == 12
    for tp, token in zip(out.token_probs, out.token_ids):
        # after top_k=2 only two tokens keep any probability, summing to 1: no third is listed
        assert tp.token_id == token and 0 < tp.prob <= 1 and len(tp.top) == 2
        assert tp.top[0][1] + tp.top[1][1] == pytest.approx(1)
    [raw] = gen.generate("Once", seed=3, max_new_tokens=12, return_probs=True, top_n=3, top_k=2,
                         raw_probs=True, stop_at_eos=False)
    assert raw.token_ids == out.token_ids
    assert all(r.top[2][1] > 0 for r in raw.token_probs)  # the model's own distribution


def test_next_token_probs_is_the_models_distribution(gen):
    probs = gen.next_token_probs("Once upon a", top_n=400)
    values = [p for _, p in probs]
    assert values == sorted(values, reverse=True) and sum(values) == pytest.approx(1, abs=1e-6)
    [greedy] = gen.generate("Once upon a", do_sample=False, max_new_tokens=1)
    assert probs[0][0] == gen.tokenizer.token_text(greedy.token_ids[0])


def test_streamed_pieces_carry_their_token_probs(gen):
    pieces = list(gen.stream("café", seed=2, max_new_tokens=20, return_probs=True, stop_at_eos=False))
    assert sum(len(p.token_probs) for p in pieces) == 20


def test_generate_to_file_resumes_an_interrupted_file(gen, tmp_path):
    target = tmp_path / "texts.txt"
    gen.generate_to_file(target, "Once", n=10, seed=70, batch_size=4, max_new_tokens=8)
    whole = target.read_text()
    assert re.findall(r"^=+ seed (\d+)$", whole, re.M) == [str(70 + i) for i in range(10)]
    # Cut the file in the middle of the 7th record, as a killed run would leave it.
    cut = whole.index("seed 76") + 12
    target.write_text(whole[:cut])
    gen.generate_to_file(target, "Once", n=10, batch_size=4, max_new_tokens=8, resume=True)
    assert target.read_text() == whole
    with pytest.raises(TinygenError, match="exists; pass resume=True"):
        gen.generate_to_file(target, "Once", n=10, seed=70)


def _model_with_replacements(src, tmp_path, replacements: dict):
    target = tmp_path / "model"
    shutil.copytree(src, target)
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(target / "tokenizer.json"))
    # Reuse existing ids for the special tokens so the model's vocabulary size is unchanged.
    tok.add_special_tokens([AddedToken("<|url|>", special=True)])
    tok.save(str(target / "tokenizer.json"))
    (target / "replacements.json").write_text(json.dumps(replacements))
    return target


def test_replacements_apply_on_encode_and_decode(optimum_gpt2_dir, tmp_path):
    model = _model_with_replacements(optimum_gpt2_dir, tmp_path, {
        "format_version": 1,
        "encode": [{"pattern": r"https?://\S+", "regex": True, "token": "<|url|>"}],
        "decode": {"<|url|>": "<link>"},
    })
    gen = TextGenerator(model, replacements=model / "replacements.json")
    url_id = gen.tokenizer.tokenizer.token_to_id("<|url|>")
    assert gen.tokenizer.encode("see https://example.com/x?y=1 now").count(url_id) == 1
    assert gen.tokenizer.decode([url_id]) == "<link>"


def test_exclude_strings_ban_a_replaced_token_by_its_name_or_its_text(optimum_gpt2_dir, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"decode": {"<|endoftext|>": "<link>"}}))
    gen = TextGenerator(optimum_gpt2_dir, replacements=path)
    token = gen.tokenizer.tokenizer.token_to_id("<|endoftext|>")
    forced = dict(do_sample=False, max_new_tokens=4, stop_at_eos=False, logit_bias={token: 100.0})
    [text] = gen.generate("Once", **forced)
    assert text.token_ids == (token,) * 4 and str(text) == "<link>" * 4
    for banned in ("<|endoftext|>", "<link>"):
        [text] = gen.generate("Once", exclude_strings=[banned], **forced)
        assert token not in text.token_ids and "<link>" not in str(text)


@pytest.mark.parametrize("data,message", [
    ({"encode": [], "colour": 1}, "unknown key 'colour'"),
    ({"encode": [{"pattern": "a", "token": "<|nope|>"}]}, "'encode' names token '<|nope|>'"),
    ({"encode": [{"pattern": "(", "regex": True, "token": "<|endoftext|>"}]}, "not a valid regex"),
    ({"encode": [{"pattern": "a*", "regex": True, "token": "<|endoftext|>"}]},
     "'encode[0].pattern' 'a*' matches the empty string"),
    ({"encode": [{"pattern": "a", "token": "<|endoftext|>", "flags": 1}]}, "unknown key 'encode[0].flags'"),
    ({"ban": "x"}, "'ban' must be a list"),
    ({"format_version": 9}, "format_version 9 is newer than this tinygen reads (1)"),
])
def test_replacements_validation_names_the_key(optimum_gpt2_dir, tmp_path, data, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelFormatError, match=re.escape(message)):
        TextGenerator(optimum_gpt2_dir, replacements=path)


def test_replacement_bans_are_never_generated(optimum_gpt2_dir, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"ban": ["<|endoftext|>"]}))
    gen = TextGenerator(optimum_gpt2_dir, replacements=path)
    eos = gen.manifest.eos_token_ids[0]
    texts = gen.generate("To be", n=20, seed=0, max_new_tokens=30, temperature=2.0)
    assert all(t.finish_reason == "length" and eos not in t.token_ids for t in texts)


def test_min_new_tokens_holds_the_end_back(gen):
    """With EOS made all but certain, a text ends at once; min_new_tokens=5 makes it end
    right after its fifth token, in a batch and alone, and stop strings still end it."""
    [eos] = gen.manifest.eos_token_ids[:1]
    forced = dict(logit_bias={eos: 50.0}, max_new_tokens=20, seed=1)
    [early] = gen.generate("Once", **forced)
    assert early.finish_reason == "eos" and early.token_ids == ()
    texts = gen.generate("Once", n=3, min_new_tokens=5, **forced)
    assert [(len(t.token_ids), t.finish_reason) for t in texts] == [(5, "eos")] * 3
    assert gen.generate("Once", min_new_tokens=5, **{**forced, "seed": 2})[0] == texts[1]
    assert "".join(gen.stream("Once", min_new_tokens=5, **forced)) == texts[0]
    [greedy] = gen.generate("Once", min_new_tokens=3, do_sample=False, logit_bias={eos: 50.0})
    assert len(greedy.token_ids) == 3 and greedy.finish_reason == "eos"
    [stopped] = gen.generate("Once", min_new_tokens=20, stop=[texts[0][:1]], **forced)
    assert stopped.finish_reason == "stop"
    for bad in (-1, 21, 2.5):
        with pytest.raises(TinygenError, match=r"min_new_tokens must be an integer from 0 to "
                                               r"max_new_tokens \(20\)"):
            gen.generate("Once", min_new_tokens=bad, max_new_tokens=20)


def test_min_new_tokens_from_the_cli(optimum_gpt2_dir):
    import io

    from tinygen.cli import main

    out, err = io.StringIO(), io.StringIO()
    assert main(["Once", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "4",
                 "--min-new-tokens", "9"], out=out, err=err) == 2
    assert err.getvalue() == "tinygen: error: --min-new-tokens must be an integer from 0 to " \
                             "--max-new-tokens (4), got 9\n"


def test_min_new_tokens_the_window_cannot_hold_is_refused_when_it_does_not_slide(gen, tmp_path):
    """Without sliding a text ends at the window, window - len(prompt) tokens on: a larger
    min_new_tokens was silently cut short there (finish_reason "window"). It is refused at the
    call, by generate, stream, astream and generate_to_file alike; sliding texts go on."""
    window = gen.manifest.context_window
    prompt, longer = "Hello.", "Hello. Once upon a time"
    room = window - len(gen.tokenizer.encode(prompt))
    options = dict(max_new_tokens=room + 20, slide_window=False, seed=7)
    [full] = gen.generate(prompt, min_new_tokens=room, **options)
    assert (len(full.token_ids), full.finish_reason) == (room, "window")
    message = (f"min_new_tokens must be at most {room} with slide_window=False: the room the window "
               f"({window} tokens) leaves after the prompt ({window - room} tokens), got {room + 1}; "
               f"lower min_new_tokens, or let the window slide")
    target = tmp_path / "texts.txt"
    for call in (lambda: gen.generate(prompt, min_new_tokens=room + 1, **options),
                 lambda: gen.stream(prompt, min_new_tokens=room + 1, **options),
                 lambda: gen.astream(prompt, min_new_tokens=room + 1, **options),
                 lambda: gen.generate_to_file(target, prompt, min_new_tokens=room + 1, **options)):
        with pytest.raises(TinygenError) as info:
            call()
        assert str(info.value) == message
    assert not target.exists()
    short = window - len(gen.tokenizer.encode(longer))
    with pytest.raises(TinygenError, match=rf"at most {short} .* after the longest prompt "):
        gen.generate([prompt, longer], min_new_tokens=short + 1, **options)
    [slid] = gen.generate(prompt, min_new_tokens=room + 1, **{**options, "slide_window": True})
    assert len(slid.token_ids) >= room + 1


def test_min_new_tokens_the_window_cannot_hold_from_the_cli(optimum_gpt2_dir):
    import io

    from tinygen.cli import main

    gen = TextGenerator(optimum_gpt2_dir)
    room = gen.manifest.context_window - len(gen.tokenizer.encode("Hi"))
    out, err = io.StringIO(), io.StringIO()
    assert main(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", str(room + 9),
                 "--min-new-tokens", str(room + 1), "--no-slide"], out=out, err=err) == 2
    assert err.getvalue() == (f"tinygen: error: --min-new-tokens must be at most {room} with --no-slide: "
                              f"the room the window ({gen.manifest.context_window} tokens) leaves after "
                              f"the prompt ({gen.manifest.context_window - room} tokens), got {room + 1}; "
                              f"lower --min-new-tokens, or let the window slide\n")
