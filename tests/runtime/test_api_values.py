"""The Python API as users call it: values of the wrong kind refused by name, numpy values taken
for what they hold, and results that survive pickle and copy (multiprocessing, caches)."""

import copy
import pickle

import numpy as np
import pytest

from tinygen import TextGenerator, TinygenError
from tinygen.decoding import Completion, Piece
from tinygen.text_file import WrittenFile


@pytest.fixture(scope="module")
def gen():
    return TextGenerator()  # the embedded tiny model: no export needed


@pytest.mark.parametrize("name", ["do_sample", "stop_at_eos", "slide_window", "return_probs", "raw_probs"])
@pytest.mark.parametrize("value", ["false", "no", 0, 1, 1.0])
def test_a_switch_takes_true_or_false_only(gen, name, value):
    """do_sample="false" (read from a config file) is a truthy string: it sampled."""
    with pytest.raises(TinygenError, match=f"{name} must be True or False, got {value!r}"):
        gen.generate("Hi", max_new_tokens=2, **{name: value})


@pytest.mark.parametrize("value", ["no", 1])
def test_resume_and_progress_take_true_or_false_only(gen, tmp_path, value):
    """resume="no" is truthy: it resumed; progress="no" showed the bar."""
    target = tmp_path / "t.txt"
    for name in ("resume", "progress"):
        with pytest.raises(TinygenError, match=f"^{name} must be True or False, got {value!r}$"):
            gen.generate_to_file(target, "Hi", max_new_tokens=2, **{name: value})
    with pytest.raises(TinygenError, match=f"^progress must be True or False, got {value!r}$"):
        gen.generate("Hi", max_new_tokens=2, progress=value)
    assert not target.exists()


def test_numpy_switches_are_the_bools_they_hold(gen):
    assert gen.generate("Hi", max_new_tokens=4, do_sample=np.bool_(False)) == \
        gen.generate("Hi", max_new_tokens=4, do_sample=False)


def test_a_seed_list_of_bools_is_refused(gen):
    with pytest.raises(TinygenError, match="a list of seeds needs 2 integers >= 0"):
        gen.generate("Hi", n=2, seed=[True, 2], max_new_tokens=2)


def test_numpy_logit_bias_and_dedupe_ngram_are_the_numbers_they_hold(gen):
    plain = gen.generate("Hi", n=3, seed=1, max_new_tokens=6, logit_bias={5: 2.0},
                         dedupe=0.5, dedupe_ngram=3)
    numpy = gen.generate("Hi", n=3, seed=1, max_new_tokens=6, logit_bias={np.int64(5): np.float32(2.0)},
                         dedupe=np.float64(0.5), dedupe_ngram=np.int64(3))
    assert list(numpy) == list(plain)
    pairs = gen.generate("Hi", n=3, seed=1, max_new_tokens=6, logit_bias=[(np.int32(5), np.float64(2.0))])
    assert list(pairs) == list(gen.generate("Hi", n=3, seed=1, max_new_tokens=6, logit_bias={5: 2.0}))


def test_texts_and_pieces_survive_pickle_and_copy(gen):
    texts = gen.generate("Hi", n=2, seed=1, max_new_tokens=5, return_probs=True, dedupe=0.5)
    for again in (pickle.loads(pickle.dumps(texts)), copy.deepcopy(texts), copy.copy(texts)):
        assert list(again) == list(texts)
        for a, b in zip(again, texts):
            assert (a.seed, a.token_ids, a.finish_reason, a.token_probs) == \
                (b.seed, b.token_ids, b.finish_reason, b.token_probs)
    pieces = list(gen.stream("Hi", seed=1, max_new_tokens=3, return_probs=True))
    again = pickle.loads(pickle.dumps(pieces))
    assert again == pieces and [p.token_probs for p in again] == [p.token_probs for p in pieces]


class Kept(Completion):
    pass


class Shown(Piece):
    pass


def test_subclasses_of_texts_and_pieces_come_back_as_themselves(gen):
    """__reduce__ named Completion and Piece: a subclass came back as its base, losing what it added."""
    [text] = gen.generate("Hi", seed=1, max_new_tokens=4, return_probs=True)
    kept = Kept(str(text), text.seed, text.token_ids, text.finish_reason, text.token_probs)
    kept.note = "mine"
    shown = Shown("piece", text.token_probs)
    for again in (pickle.loads(pickle.dumps(kept)), copy.copy(kept), copy.deepcopy(kept)):
        assert type(again) is Kept and again == kept and again.note == "mine"
        assert (again.seed, again.token_ids, again.token_probs) == (kept.seed, kept.token_ids, kept.token_probs)
    for again in (pickle.loads(pickle.dumps(shown)), copy.copy(shown)):
        assert type(again) is Shown and again == shown and again.token_probs == shown.token_probs


def test_a_written_file_keeps_its_counts_through_pickle_and_copy(gen, tmp_path):
    """generate_to_file's result is a Path with .written and .texts; Path's own __reduce__
    remade the path alone, so they read 0."""
    written = gen.generate_to_file(tmp_path / "t.txt", "Hi", n=3, seed=1, max_new_tokens=3)
    assert (written.written, written.texts) == (3, 3)
    made = WrittenFile.of(tmp_path / "x", 2, 5)
    for value in (written, made):
        for again in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
            assert type(again) is WrittenFile and again == value
            assert (again.written, again.texts) == (value.written, value.texts)


def test_stream_refuses_generates_own_arguments_saying_so(gen):
    """stream makes one text: n (and generate's other arguments) was an 'unknown generation option'."""
    with pytest.raises(TinygenError) as info:
        gen.stream("Hi", n=2)
    assert str(info.value) == "stream makes one text, so it takes no n; generate makes n texts " \
                              "(generate(prompt, n=...))"
    with pytest.raises(TinygenError, match="astream makes one text, so it takes no batch_size; "
                                           "agenerate makes n texts"):
        gen.astream("Hi", batch_size=4)
    with pytest.raises(TinygenError, match="unknown generation option 'tempreature'"):
        gen.stream("Hi", tempreature=2)


def test_constructor_arguments_are_checked_by_name():
    with pytest.raises(TinygenError, match="replacements must be a replacements.json path .* "
                                           "got an empty string"):
        TextGenerator(replacements="")
    with pytest.raises(TinygenError, match="cuda_graphs must be True or False, got 'no'"):
        TextGenerator(cuda_graphs="no")


def test_an_empty_list_of_token_ids_is_an_empty_prompt():
    """[[]] was 'a prompt must be a string or a list of token ids, got list'."""
    gen = TextGenerator()
    [empty_ids] = gen.generate([[]], seed=3, max_new_tokens=4)  # no ids: the start token alone
    assert empty_ids.token_ids == gen.generate([gen.prompts.start_ids()], seed=3,
                                               max_new_tokens=4)[0].token_ids
    with pytest.raises(TinygenError, match="no prompts given"):
        gen.generate([])


def test_a_closed_generator_writes_no_file(tmp_path):
    gen = TextGenerator()
    gen.close()
    with pytest.raises(TinygenError, match="this TextGenerator was closed"):
        gen.generate_to_file(tmp_path / "texts.txt", "Hi", n=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("seed,message", [(-1, "seed must be >= 0, got -1"),
                                          ("7", "seed must be an integer or a list of integers, got '7'"),
                                          ([1, 2], "a list of seeds needs 1 integer >= 0, one per text")])
def test_a_bad_seed_is_refused_under_greedy_decoding_too(gen, seed, message):
    """Greedy decoding draws nothing, but a bad seed is still a mistake: it was ignored."""
    for call in (lambda: gen.generate("Hi", seed=seed, do_sample=False, max_new_tokens=2),
                 lambda: gen.stream("Hi", seed=seed, temperature=0, max_new_tokens=2)):
        with pytest.raises(TinygenError, match=message):
            call()
    assert gen.generate("Hi", seed=5, do_sample=False, max_new_tokens=2)[0].seed is None


def test_greedy_texts_to_a_file_in_several_batches(gen, tmp_path):
    """generate_to_file hands each batch its seeds, all None under greedy decoding."""
    written = gen.generate_to_file(tmp_path / "t.txt", "Hi", n=3, batch_size=2, do_sample=False,
                                   max_new_tokens=3)
    assert written.written == 3
    assert (tmp_path / "t.txt").read_text().count("==================== seed greedy\n") == 3
    with pytest.raises(TinygenError, match="a list of seeds needs 2 integers >= 0"):
        gen.generate("Hi", n=2, seed=[None, 1], max_new_tokens=2)
