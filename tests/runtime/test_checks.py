"""Bad options, corrupt model directories and impossible settings: one clear TinygenError each."""

import json
import shutil

import numpy as np
import pytest

from tinygen import GenerationConfig, ModelFormatError, TextGenerator, TinygenError
from tinygen.cli import _options, build_parser
from tinygen.manifest import Manifest, load_manifest
from tinygen.sampling import GreedySampler, RandomSampler

from runtime_cli import run


@pytest.fixture(scope="module")
def gen(optimum_gpt2_dir):
    return TextGenerator(optimum_gpt2_dir)


@pytest.fixture
def model_copy(optimum_gpt2_dir, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(optimum_gpt2_dir, target)
    return target


# -- 4. logit bias ids ------------------------------------------------------------------

@pytest.mark.parametrize("bias,message", [
    ({10000: 5.0}, "logit_bias: token id 10000 is outside the vocabulary"),
    ({-1: 100.0}, "logit_bias must be"),
])
def test_logit_bias_ids_must_be_in_the_vocabulary(gen, bias, message):
    with pytest.raises(TinygenError, match=message):
        gen.generate("Once", logit_bias=bias, max_new_tokens=2)


def test_logit_bias_values_must_be_finite():
    with pytest.raises(TinygenError, match="logit_bias"):
        GenerationConfig().merged(logit_bias={3: float("inf")})


# -- 8. option types ----------------------------------------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"stop": 5}, "stop must be a string or a list of strings, got 5"),
    ({"exclude_strings": 5}, "exclude_strings must be a string or a list of strings"),
    ({"exclude_ids": 3}, "exclude_ids must be a list of token ids, got 3"),
    ({"exclude_ids": "abc"}, "exclude_ids must be a list of token ids"),
    ({"logit_bias": 5}, "logit_bias must be a mapping of token id to number"),
    ({"logit_bias": {"a": 1, 2: 1}}, "logit_bias must be a mapping of token id to number"),
    ({"logit_bias": [(1, 2, 3)]}, "logit_bias must be a mapping of token id to number"),
    ({"stop": [1]}, "stop must be"),
])
def test_wrong_option_types_are_one_clear_error(options, message):
    with pytest.raises(TinygenError, match=message) as info:
        GenerationConfig().merged(**options)
    assert "\n" not in str(info.value)


def test_lists_and_pairs_are_still_accepted():
    config = GenerationConfig().merged(stop=["a", "b"], exclude_ids={3, 1}, logit_bias=[(2, 1.5)])
    assert config.stop == ("a", "b") and config.exclude_ids == (1, 3) and config.logit_bias == ((2, 1.5),)


# -- 9. dedupe settings are checked before decoding --------------------------------------

@pytest.mark.parametrize("options,message", [
    ({"dedupe": 2}, r"dedupe must be a share in \(0, 1\]"),
    ({"dedupe": "x"}, r"dedupe must be a share in \(0, 1\]"),
    ({"dedupe": 0.5, "dedupe_ngram": 0}, "dedupe_ngram must be an integer >= 1"),
    ({"dedupe": 0.5, "dedupe_against": "/no/such.tokens"}, "token cache not found"),
    ({"dedupe_against": "/no/such.tokens"}, "dedupe_against needs dedupe"),
])
def test_dedupe_settings_fail_before_any_decoding(optimum_gpt2_dir, monkeypatch, options, message):
    gen = TextGenerator(optimum_gpt2_dir)

    def decoded(*args, **kwargs):
        raise AssertionError("decoding started before the settings were checked")

    monkeypatch.setattr(gen, "_decoding", decoded)
    with pytest.raises(TinygenError, match=message):
        gen.generate("Once", n=2, seed=0, **options)


# -- 10. corrupt model directories ------------------------------------------------------

def test_config_without_vocab_size(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    del config["vocab_size"]
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match=r"config.json: missing 'vocab_size'"):
        TextGenerator(model_copy)


@pytest.mark.parametrize("key,value", [("n_layer", "two"), ("n_head", 0), ("vocab_size", None)])
def test_config_with_bad_shape_values(model_copy, key, value):
    config = json.loads((model_copy / "config.json").read_text())
    config[key] = value
    (model_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="config.json"):
        TextGenerator(model_copy)


@pytest.mark.parametrize("key,value,message", [
    ("inputs", [1], "'inputs' must be an object"),
    ("outputs", "logits", "'outputs' must be an object"),
    ("inputs", {"input_ids": 3}, "'inputs' must map names to strings"),
    ("generation", [1], "'generation' must be an object"),
    ("tokenizer_file", 5, "'tokenizer_file' must be a file name"),
    ("fields_file", ["x"], "'fields_file' must be a file name"),
    ("bos_token_id", "x", "'bos_token_id' must be a token id"),
])
def test_manifest_with_wrong_types(model_copy, key, value, message):
    data = load_manifest(model_copy).to_json()
    with pytest.raises(ModelFormatError, match=message):
        Manifest.from_json({**data, key: value})


def test_manifest_generation_defaults_are_checked_with_the_file_named(model_copy):
    data = load_manifest(model_copy).to_json()
    (model_copy / "tinygen.json").write_text(json.dumps({**data, "generation": {"top_p": 7}}))
    with pytest.raises(ModelFormatError, match=r"tinygen.json: 'generation': top_p must be in"):
        TextGenerator(model_copy)


def test_field_token_missing_from_the_vocabulary(model_copy):
    (model_copy / "fields.json").write_text(json.dumps({"format_version": 1, "names": ["title", "body"]}))
    Manifest.from_json({**load_manifest(model_copy).to_json(), "fields_file": "fields.json"}).save(model_copy)
    gen = TextGenerator(model_copy)
    with pytest.raises(ModelFormatError, match=r"fields.json: the field token '<\|title\|>' is not in"):
        gen.generate(context={"title": "Rain"}, max_new_tokens=2)


# -- 11. nothing left to sample -----------------------------------------------------------

def test_excluding_every_token_is_refused_up_front(gen):
    with pytest.raises(TinygenError, match="no token is left to sample"):
        gen.generate("Once", exclude_ids=list(range(gen.manifest.vocab_size)), max_new_tokens=2)


@pytest.mark.parametrize("do_sample", [True, False])
def test_bans_that_empty_the_distribution_mid_text_are_an_error(gen, do_sample):
    # Only token 42 may be generated, and never twice (no_repeat_ngram_size=1): step 2 has nothing.
    others = [i for i in range(gen.manifest.vocab_size) if i != 42]
    with pytest.raises(TinygenError, match="no token is left to sample"):
        gen.generate("Once", exclude_ids=others, no_repeat_ngram_size=1, max_new_tokens=4,
                     do_sample=do_sample, seed=0)
    with pytest.raises(TinygenError, match="no token is left to sample"):
        list(gen.stream("Once", exclude_ids=others, no_repeat_ngram_size=1, max_new_tokens=4,
                        do_sample=do_sample, seed=0))
    # A text that ends before it runs out is fine, even while its batch goes on.
    texts = gen.generate(["Once", "Once upon a time"], exclude_ids=others, no_repeat_ngram_size=1,
                         max_new_tokens=1, do_sample=do_sample, seed=0)
    assert [t.token_ids for t in texts] == [(42,), (42,)]


def test_no_token_left_but_the_end_that_min_new_tokens_holds_back_says_so(gen):
    """Every token excluded but EOS, which min_new_tokens holds back: the message names
    min_new_tokens, which is what removed the last token; without it the text just ends."""
    [eos] = gen.manifest.eos_token_ids[:1]
    others = [i for i in range(gen.manifest.vocab_size) if i != eos]
    message = ("no token is left to sample: the exclusions, logit bias and repetition bans remove "
               "every token, and min_new_tokens (1) holds back the end of the text; allow more "
               "tokens, or lower min_new_tokens")
    for do_sample in (True, False):
        with pytest.raises(TinygenError) as info:
            gen.generate("Once", exclude_ids=others, min_new_tokens=1, max_new_tokens=3,
                         do_sample=do_sample, seed=0)
        assert str(info.value) == message
        with pytest.raises(TinygenError) as info:
            list(gen.stream("Once", exclude_ids=others, min_new_tokens=1, max_new_tokens=3,
                            do_sample=do_sample, seed=0))
        assert str(info.value) == message
    [ended] = gen.generate("Once", exclude_ids=others, max_new_tokens=3, seed=0)
    assert ended.finish_reason == "eos" and ended.token_ids == ()
    # Bans that leave nothing once the text may end are the bans' doing alone.
    with pytest.raises(TinygenError) as info:
        gen.generate("Once", exclude_ids=[i for i in others if i != 42], no_repeat_ngram_size=1,
                     stop_at_eos=False, min_new_tokens=1, max_new_tokens=4, seed=0)
    assert "min_new_tokens" not in str(info.value)


class Row:
    def __init__(self, finish_reason=None):
        self.finish_reason = finish_reason


def _with_rows(sampler, rows):
    sampler.rows = rows
    return sampler


def test_samplers_refuse_rows_still_going_with_no_token_left():
    logits = np.array([[0.5, 1.0, -1.0], [-np.inf] * 3], dtype=np.float32)
    going = [Row(), Row()]
    with pytest.raises(TinygenError, match="no token is left to sample"):
        _with_rows(GreedySampler(), going)(logits)
    with pytest.raises(TinygenError, match="no token is left to sample"):
        _with_rows(RandomSampler([0, 1]), going)(logits)
    # A finished row (kept in a static batch, its token unused) may have nothing left.
    finished = [Row(), Row("length")]
    assert _with_rows(GreedySampler(), finished)(logits).tolist()[0] == 1
    assert _with_rows(RandomSampler([0, 1]), finished)(logits).tolist()[0] in (0, 1)
    assert _with_rows(GreedySampler(), going[:1])(logits[:1]).tolist() == [1]
    one = np.array([[-np.inf, 0.0, -np.inf]], np.float32)
    assert _with_rows(RandomSampler([0]), going[:1])(one).tolist() == [1]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_scores_the_model_broke_are_not_blamed_on_the_options(bad):
    """NaN or +inf logits come from the model (damaged weights), not from exclusions or bans."""
    logits = np.array([[0.5, bad, -np.inf]], dtype=np.float32)
    for sampler in (GreedySampler(), RandomSampler([0])) if np.isnan(bad) else (RandomSampler([0]),):
        with pytest.raises(TinygenError, match=r"^the model's next-token scores are not numbers "
                                               r"\(NaN or infinite logits\).*export it again$"):
            _with_rows(sampler, [Row()])(logits)


# -- 6. --stop escapes ------------------------------------------------------------------------

def test_stop_understands_backslash_escapes():
    args = build_parser().parse_args(["generate", "x", "--stop", r"\n\n", "--stop", r"café\tend",
                                      "--stop", r"a\\nb", "--stop", r"\q", "--stop", "naïve\r"])
    assert _options(args)["stop"] == ["\n\n", "café\tend", "a\\nb", "\\q", "naïve\r"]
    args = build_parser().parse_args(["generate", "x", "--stop", r"\r\n"])
    assert _options(args)["stop"] == ["\r\n"]


# -- 7. --show-probs where it cannot show anything ---------------------------------------------

@pytest.mark.parametrize("extra", [["-n", "2"], ["--dedupe", "0.5"], ["--to-file", "t.txt"]])
def test_show_probs_where_it_would_be_ignored_is_refused(optimum_gpt2_dir, tmp_path, monkeypatch, extra):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["Hi", "--model", str(optimum_gpt2_dir), "--max-new-tokens", "3", "--show-probs", *extra])
    assert code == 2 and out == "" and err.count("\n") == 1 and "--show-probs" in err
    assert not (tmp_path / "t.txt").exists()


# -- 5. curate with max_new_tokens at or above the window ---------------------------------------

@pytest.mark.parametrize("max_new", [128, 200])
def test_curate_keeps_a_long_text_inside_the_window(gen, max_new):
    from tinygen.curate import Curator

    curator = Curator(gen, 1, 0, {"max_new_tokens": max_new, "stop_at_eos": False})
    round_ = curator.candidates("Once upon a time there was a model. " * 40)
    assert len(round_.candidates) == 1 and round_.candidates[0]
    no_slide = Curator(gen, 1, 0, {"max_new_tokens": max_new, "slide_window": False, "stop_at_eos": False})
    [text] = no_slide.candidates("Once upon a time there was a model. " * 40).candidates
    assert text


def test_config_saying_minus_one_for_no_pad_token_still_loads(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["pad_token_id"] = -1
    (model_copy / "config.json").write_text(json.dumps(config))
    assert TextGenerator(model_copy).manifest.pad_token_id is None


def test_bad_dedupe_share_from_the_cli_names_the_flag(optimum_gpt2_dir):
    code, out, err = run(["Hi", "--model", str(optimum_gpt2_dir), "-n", "2", "--dedupe", "3"])
    assert code == 2 and out == "" and err == "tinygen: error: --dedupe must be a share in (0, 1], got 3.0\n"


@pytest.mark.parametrize("do_sample", [True, False])
def test_a_finished_row_with_nothing_left_does_not_stop_its_batch(gen, do_sample):
    a, b = 262, 281  # 'st' and 'wn': the only tokens allowed, each at most once per row
    options = dict(exclude_ids=[i for i in range(gen.manifest.vocab_size) if i not in (a, b)],
                   no_repeat_ngram_size=1, do_sample=do_sample, stop_at_eos=False)
    once = gen.tokenizer.encode("Once")
    [alone] = gen.generate(once, seed=[7], max_new_tokens=1, **options)
    first = alone.token_ids[0]
    other = b if first == a else a
    # Row 0 has `first` in its prompt, so it takes `other`, stops at it, and has nothing left;
    # row 1 goes on for a second step, with row 0 finished (and empty) beside it.
    texts = gen.generate([once + [first], once], seed=[3, 7], max_new_tokens=4,
                         stop=gen.tokenizer.token_text(other), **options)
    assert texts[0].token_ids == (other,) and texts[0].finish_reason == "stop"
    assert texts[1].token_ids == (first, other) and texts[1].finish_reason == "stop"


def test_first_line_keeps_a_third_party_message_to_one_line_and_says_when_it_cut():
    from tinygen.errors import first_line

    assert first_line(RuntimeError("  bad shape\n  at node 3\n")) == "bad shape"
    assert first_line(KeyError()) == "KeyError"
    long = RuntimeError("x" * 150 + " " + "y" * 100)
    cut = first_line(long)
    assert len(cut) <= 200 and cut.endswith("...") and cut.startswith("x" * 150)
    assert first_line(RuntimeError("z" * 200)) == "z" * 200  # at the limit: whole


def test_a_model_with_damaged_weights_says_so(model_copy):
    """NaN weights (a corrupt file) made every logit NaN; the error blamed the exclusions."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_copy / "model.onnx"))
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT and tensor.dims:
            weights = numpy_helper.to_array(tensor).copy()
            weights.flat[0] = np.nan
            tensor.CopyFrom(numpy_helper.from_array(weights, tensor.name))
    onnx.save(model, str(model_copy / "model.onnx"))
    for sampling in ([], ["--greedy"]):
        code, out, err = run(["Once", "--model", str(model_copy), "--seed", "1", *sampling])
        assert code == 2 and err.splitlines()[-1] == (
            "tinygen: error: the model's next-token scores are not numbers (NaN or infinite "
            "logits): its weights are damaged or its export is broken; export it again")


@pytest.mark.parametrize("model", ["optimum", "fused"])
def test_a_graph_onnxruntime_cannot_run_is_one_line(model, optimum_gpt2_dir, exported_gpt2_dir,
                                                    tmp_path):
    """A graph that loads but fails in its first run (a kernel's rule the export broke: heads
    of 24 under rotary) raised onnxruntime's own error: a traceback in the CLI."""
    folder = {"optimum": optimum_gpt2_dir, "fused": exported_gpt2_dir}[model]
    gen = TextGenerator(folder)

    class Refusing:
        def __init__(self, session):
            self.session = session

        def __getattr__(self, name):
            return getattr(self.session, name)

        def run_with_iobinding(self, *args):
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : head_size shall be a multiple "
                               "of 16.\n  at GroupQueryAttention")
    gen.model.session = Refusing(gen.model.session)
    with pytest.raises(TinygenError) as info:
        gen.generate("Once", seed=1, max_new_tokens=3)
    assert str(info.value) == ("onnxruntime could not run the model ([ONNXRuntimeError] : 1 : FAIL "
                               ": head_size shall be a multiple of 16.); if its export is broken, "
                               "export it again")
