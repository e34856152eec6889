"""Bad input an earlier sweep found answered badly, each now one line (or done right): a batch
too large for memory, an unbounded curate -k, replacements.json's format_version 0, a model
file that is a folder, and a curate error written on the prompt's line."""

import io
import json
import re
import shutil
import sys

import pytest

import tinygen.batch_memory as batch_memory
from tinygen import ModelFormatError, TextGenerator
from tinygen.batch_memory import BatchTooLarge, row_bytes, sure_tokens
from tinygen.cli import main
from tinygen.fields import FieldSchema
from tinygen.replacements import Replacements

from runtime_cli import run


@pytest.fixture(scope="module")
def gen():
    return TextGenerator(device="cpu")  # the embedded tiny model


@pytest.fixture
def model_copy(tmp_path):
    """A copy of the embedded model's folder, to damage."""
    import tinygen_tinymodel

    folder = tmp_path / "model"
    shutil.copytree(tinygen_tinymodel.model_dir(), folder)
    return folder


# -- a batch too large for memory ------------------------------------------------------

def per_text(gen, prompt="Hi", **options) -> int:
    """batch_memory's lower bound for one text of `prompt`, as generate asks it."""
    config = gen.defaults.merged(**options)
    [ids] = gen.prompts.encode(prompt)
    ends = set(gen.manifest.eos_token_ids) if config.stop_at_eos else set()
    return row_bytes(gen.model, [len(ids)], sure_tokens(config, ends))


def test_the_estimate_counts_the_kv_pages_written_and_the_logits(gen):
    """The embedded model (4 layers x 2 KV heads x 64, float32 over a window of 512; 49,152
    logits): a text that may end at its first token writes one page of each of its 16 KV
    slices; one sure of 200 tokens writes 200 positions, 13 pages of each."""
    logits = 49152 * 4
    assert per_text(gen, max_new_tokens=200) == 16 * 4096 + logits
    assert per_text(gen, max_new_tokens=200, stop_at_eos=False) == 16 * 13 * 4096 + logits
    assert per_text(gen, max_new_tokens=200, stop_at_eos=False, stop=["."]) == 16 * 4096 + logits


def test_a_batch_too_large_for_memory_is_refused_and_one_that_fits_runs(gen, monkeypatch):
    """-n 4096 --batch-size 4096 held ~0.7 MB a text: a bigger batch or model was killed for
    memory, with no message. A batch the lower bound says cannot fit is refused before its
    buffers are made, saying what fits; a batch that fits is made as it would be anyway."""
    each = per_text(gen, max_new_tokens=3)
    expected = [str(t) for t in gen.generate("Hi", n=8, seed=5, max_new_tokens=3)]
    monkeypatch.setattr(batch_memory, "available_memory", lambda: 3 * each + each // 2)
    with pytest.raises(BatchTooLarge, match=re.escape(
            f"a batch of 8 texts needs at least {batch_memory.size(8 * each)} of memory "
            f"({batch_memory.size(each)} a text), and {batch_memory.size(3 * each + each // 2)} is "
            f"available: at most 3 fit; lower batch_size to 3 or less")):
        gen.generate("Hi", n=8, seed=5, max_new_tokens=3)
    fitting = gen.generate("Hi", n=8, seed=5, max_new_tokens=3, batch_size=3)
    assert [str(t) for t in fitting] == expected
    argv = ["Hi", "-n", "8", "--max-new-tokens", "3", "--seed", "5"]
    code, out, err = run([*argv, "--batch-size", "8"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("tinygen: error: a batch of 8 texts needs at least ") and \
        err.endswith("at most 3 fit; lower --batch-size to 3 or less\n")
    code, out, err = run([*argv, "--batch-size", "3"])
    assert code == 0 and out.count("Hi") == 8


def test_a_file_whose_first_batch_cannot_fit_is_not_started(gen, monkeypatch, tmp_path):
    """generate_to_file refuses what it can before the file is touched: a first batch too
    large for memory left an empty file and its settings, though nothing was written."""
    each = per_text(gen, max_new_tokens=3)
    monkeypatch.setattr(batch_memory, "available_memory", lambda: 3 * each + each // 2)
    path = tmp_path / "texts.txt"
    with pytest.raises(BatchTooLarge, match="at most 3 fit"):
        gen.generate_to_file(path, "Hi", n=8, batch_size=8, seed=5, max_new_tokens=3)
    assert list(tmp_path.iterdir()) == []
    written = gen.generate_to_file(path, "Hi", n=8, batch_size=3, seed=5, max_new_tokens=3)
    assert written.written == 8
    # n under the batch size: the first batch is n texts
    monkeypatch.setattr(batch_memory, "available_memory", lambda: 2 * each + each // 2)
    assert gen.generate_to_file(tmp_path / "two.txt", "Hi", n=2, batch_size=8, seed=5,
                                max_new_tokens=3).written == 2


def test_one_text_that_cannot_fit_says_so(gen, monkeypatch):
    monkeypatch.setattr(batch_memory, "available_memory", lambda: 1000)
    with pytest.raises(BatchTooLarge, match=r"^one text needs at least 262 kB of memory, and 1 kB "
                                            r"is available; free some memory, or use a smaller "
                                            r"model$"):
        list(gen.stream("Hi", seed=1, max_new_tokens=3))


def test_without_meminfo_nothing_is_refused(gen, monkeypatch):
    """Not Linux: no MemAvailable to compare with, so no check (and no psutil)."""
    monkeypatch.setattr(batch_memory, "available_memory", lambda: None)
    assert len(gen.generate("Hi", n=4, batch_size=4, seed=1, max_new_tokens=2)) == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/meminfo is Linux's")
def test_available_memory_is_read_from_meminfo():
    with open("/proc/meminfo") as f:
        sizes = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    assert 0 < batch_memory.available_memory() <= sizes["MemTotal"] + sizes.get("SwapTotal", 0)


def test_available_memory_counts_free_swap(tmp_path):
    """A batch that would fit, however slowly, in swap is not refused (a lower bound)."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 8000 kB\nMemAvailable: 3000 kB\nSwapFree: 2000 kB\n")
    assert batch_memory.available_memory(str(meminfo)) == 5000 * 1024
    meminfo.write_text("MemTotal: 8000 kB\nMemAvailable: 3000 kB\n")  # no swap line
    assert batch_memory.available_memory(str(meminfo)) == 3000 * 1024
    meminfo.write_text("MemTotal: 8000 kB\nMemFree: 3000 kB\n")  # kernels before 3.14
    assert batch_memory.available_memory(str(meminfo)) is None
    assert batch_memory.available_memory(str(tmp_path / "none")) is None


# -- curate -k ---------------------------------------------------------------------------

def test_curate_k_has_an_upper_bound(monkeypatch):
    """-k 100000000 made texts for hours before the first round's choice was shown."""
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    assert run(["curate", "Hi", "-k", "51", "--max-new-tokens", "3"]) == \
        (2, "", "tinygen: error: -k must be at most 50, the continuations a round shows to choose "
                "from (all made before any is shown), got 51\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("1\nq\n"))
    code, out, _ = run(["curate", "Hi", "-k", "50", "--max-new-tokens", "2", "--seed", "1"])
    assert code == 0 and "[50] " in out


def test_curate_refuses_greedy_candidates_that_are_all_the_same(monkeypatch):
    """--greedy -k 3 showed three copies of one text each round, rerolls included."""
    monkeypatch.setattr("sys.stdin", io.StringIO("q\n"))
    assert run(["curate", "Hi", "-k", "3", "--greedy", "--max-new-tokens", "3"]) == \
        (2, "", "tinygen: error: greedy decoding makes all 3 candidates the same text; sample "
                "(drop --greedy) to choose between 3, or use -k 1\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("1\nq\n"))  # one greedy step at a time
    code, out, _ = run(["curate", "Hi", "-k", "1", "--greedy", "--max-new-tokens", "3"])
    assert code == 0 and "[1] " in out


# -- curate errors start their own line ----------------------------------------------------

CURATE = ["curate", "Hi", "-k", "2", "--max-new-tokens", "3", "--seed", "1"]


@pytest.mark.parametrize("stdin,prompt", [
    (lambda: io.StringIO("e 1\nab\udcffc\n"), "new text for [1]: "),
    (lambda: io.TextIOWrapper(io.BytesIO(b"\xff\n"), encoding="utf-8"), "> "),
], ids=["edit", "choice"])
def test_a_curate_error_after_a_prompt_starts_on_a_line_of_its_own(monkeypatch, stdin, prompt):
    """Piped answers are not echoed: the prompt's line stayed open, and on a terminal the error
    followed on it ("new text for [1]: tinygen: error: ...")."""
    monkeypatch.setattr("sys.stdin", stdin())
    out, err = io.StringIO(), io.StringIO()
    assert main(CURATE, out=out, err=err) == 2
    assert out.getvalue().endswith(prompt + "\n")
    assert err.getvalue().startswith("tinygen: error: ") and err.getvalue().count("\n") == 1


def test_an_interrupted_curate_ends_the_prompts_line(monkeypatch):
    class Interrupted(io.StringIO):
        def readline(self, *args):
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", Interrupted())
    out, err = io.StringIO(), io.StringIO()
    assert main(CURATE, out=out, err=err) == 130
    assert out.getvalue().endswith("> \n") and err.getvalue() == "tinygen: interrupted\n"


# -- format_version ----------------------------------------------------------------------

@pytest.mark.parametrize("version", [0, -1])
def test_a_replacements_format_version_below_1_is_refused(model_copy, version):
    path = model_copy / "replacements.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format_version": version}))
    message = f"{path}: format_version {version} is not one tinygen writes (1); set it to 1"
    with pytest.raises(ModelFormatError, match=f"^{re.escape(message)}$"):
        Replacements.load(path)
    assert run(["Hi", "--model", str(model_copy), "--max-new-tokens", "2"]) == \
        (2, "", f"tinygen: error: {message}\n")


@pytest.mark.parametrize("version,message", [
    (2, "format_version 2 is newer than this tinygen reads (1); upgrade with: pip install -U "
        "tinygen"),
    (1.5, "'format_version' must be an integer, got 1.5"),
    (True, "'format_version' must be an integer, got True"),
])
def test_a_replacements_format_version_tinygen_does_not_know_is_refused(tmp_path, version, message):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"format_version": version}))
    with pytest.raises(ModelFormatError, match=f"^{re.escape(f'{path}: {message}')}$"):
        Replacements.load(path)


def test_a_fields_format_version_below_1_is_refused(tmp_path):
    path = tmp_path / "fields.json"
    path.write_text(json.dumps({"format_version": 0, "names": ["title", "body"]}))
    message = f"{path}: format_version 0 is not one tinygen writes (1); set it to 1"
    with pytest.raises(ModelFormatError, match=f"^{re.escape(message)}$"):
        FieldSchema.load(path)


# -- a model file that is a folder ------------------------------------------------------

@pytest.mark.parametrize("name", ["tokenizer.json", "model.onnx", "tinygen.json"])
def test_a_model_file_that_is_a_folder_is_called_one(model_copy, name):
    """It was "missing tokenizer.json": the user looks for a file that is there."""
    (model_copy / name).unlink()
    (model_copy / name).mkdir()
    message = (f"{model_copy / name} is a folder, not a file; put the model's {name} file there "
               f"(copy the model folder again)")
    with pytest.raises(ModelFormatError, match=f"^{re.escape(message)}$"):
        TextGenerator(model_copy)
    assert run(["Hi", "--model", str(model_copy)]) == (2, "", f"tinygen: error: {message}\n")


def test_a_weights_file_that_is_a_folder_is_called_one(exported_llama_dir, tmp_path):
    """A fused export's model.onnx.data, as a folder: it was "missing model.onnx.data"."""
    folder = tmp_path / "fused"
    shutil.copytree(exported_llama_dir, folder)
    (folder / "model.onnx.data").unlink()
    (folder / "model.onnx.data").mkdir()
    message = (f"{folder / 'model.onnx.data'} is a folder, not a file; put the model's weights "
               f"file model.onnx.data there (copy the model folder again)")
    with pytest.raises(ModelFormatError, match=f"^{re.escape(message)}$"):
        TextGenerator(folder)
