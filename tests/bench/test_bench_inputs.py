"""The bench scripts refuse bad input in one line on stderr, exit code 2, before any model is
built or loaded (tools/script_errors.py); nothing here builds a model."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"
TIMEOUT = 60


def refused(script: str, *args: str, cwd: Path | None = None) -> str:
    """The script's one-line error; it must print nothing on stdout (no table header first)."""
    result = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                            text=True, timeout=TIMEOUT, cwd=cwd)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stdout == ""
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- bench_server.py ------------------------------------------------------------------

def test_server_url_where_nothing_listens(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    line = refused("bench_server.py", "--url", url, "--work-dir", str(tmp_path))
    assert f"nothing answers at {url}" in line


@pytest.mark.parametrize("option, value", [("--clients", "0"), ("--duration", "-1"),
                                           ("--compare", "-2")])
def test_server_counts_out_of_range(tmp_path, option, value):
    line = refused("bench_server.py", option, value, "--model", str(tmp_path / "nope"),
                   "--work-dir", str(tmp_path))
    assert f"{option} must be" in line and value in line


def test_server_model_not_there(tmp_path):
    line = refused("bench_server.py", "--model", str(tmp_path / "nope"), "--work-dir", str(tmp_path))
    assert "model directory not found" in line


# -- perplexity.py --------------------------------------------------------------------

@pytest.fixture
def token_cache(tmp_path) -> Path:
    from tinygen.token_cache import save_token_cache

    path = tmp_path / "held.tokens"
    save_token_cache(path, np.arange(10, 200, dtype=np.uint16), np.array([190]), {})
    return path


def test_perplexity_model_not_there(tmp_path, token_cache):
    line = refused("perplexity.py", str(tmp_path / "nope"), "--tokens", str(token_cache),
                   "--block", "8", "--blocks", "2")
    assert "model directory not found" in line


def test_perplexity_folder_that_is_no_model(tmp_path, token_cache):
    (tmp_path / "empty").mkdir()
    line = refused("perplexity.py", str(tmp_path / "empty"), "--tokens", str(token_cache),
                   "--block", "8", "--blocks", "2")
    assert "no tinygen.json or config.json" in line


def test_perplexity_tokens_not_there(tmp_path):
    line = refused("perplexity.py", str(tmp_path), "--tokens", str(tmp_path / "nope.tokens"))
    assert "token cache not found" in line


def test_perplexity_tokens_that_are_text(tmp_path):
    text = tmp_path / "held.txt"
    text.write_text("some held-out text\n")
    line = refused("perplexity.py", str(tmp_path), "--tokens", str(text))
    assert "not a tinygen token cache" in line


def test_perplexity_text_not_there(tmp_path):
    line = refused("perplexity.py", str(tmp_path), "--text", str(tmp_path / "nope.txt"))
    assert "No such file or directory" in line and "nope.txt" in line


def test_perplexity_tokens_of_another_tokenizer(token_cache):
    """Scored anyway, the ids would be another vocabulary's: noise, or an IndexError past it."""
    from tinygen_tinymodel import model_dir

    line = refused("perplexity.py", str(model_dir()), "--tokens", str(token_cache), "--block", "8",
                   "--blocks", "2")
    assert line.endswith(f"{token_cache} was encoded with another tokenizer or other replacement "
                         f"rules than {model_dir()}'s: encode the held-out text with `tinygen-train "
                         f"encode --tokenizer {model_dir() / 'tokenizer.json'}`, or compare models "
                         f"of different tokenizers with --text")


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")))
def test_help_shows_no_empty_or_repeated_defaults(script):
    """The project's formatter: a default is added where it tells something, once."""
    result = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    for empty in ("(default: None)", "(default: False)"):
        assert empty not in result.stdout, f"{script}: {empty}"
    options = re.split(r"\n  -", " ".join(result.stdout.split("\n\n")[1:]))
    assert all(o.lower().count("default") <= 1 for o in options), \
        [o for o in options if o.lower().count("default") > 1]


@pytest.mark.parametrize("option, value", [("--blocks", "0"), ("--block", "0"), ("--block", "-5")])
def test_perplexity_block_counts(tmp_path, token_cache, option, value):
    line = refused("perplexity.py", str(tmp_path), "--tokens", str(token_cache), option, value)
    assert f"{option} must be >= 1" in line


# -- bench_kv_attention.py ------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--kv-heads", "5"], "--heads (12) must be a multiple of --kv-heads (5)"),
    (["--head-size", "63"], "--head-size must be a multiple of 8"),
    (["--positions", "32", "5000"], "--positions must be between 0 and --capacity - 1 (1023)"),
    (["--layers", "0"], "--layers must be >= 1"),
    (["--rounds", "0"], "--rounds must be >= 1"),
])
def test_kv_attention_shapes(args, message):
    assert message in refused("bench_kv_attention.py", *args)


# -- bench_long.py ------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--windows", "0"], "--windows must be >= 1"),
    (["--windows", "-1"], "--windows must be >= 1"),
    (["--threads", "0"], "--threads must be >= 1"),
    ([], "model directory not found"),
])
def test_long_inputs(tmp_path, args, message):
    line = refused("bench_long.py", "--model", str(tmp_path / "nope"), "--work-dir", str(tmp_path),
                   *args)
    assert message in line


# -- bench_token_cache.py -----------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--vocab-size", "50"], "vocab_size must be at least 257"),
])
def test_token_cache_inputs(args, message):
    assert message in refused("bench_token_cache.py", *args)


# -- bench_cuda.py --------------------------------------------------------------------

def test_cuda_refused_without_onnxruntime_gpu(tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime here has CUDA")
    line = refused("bench_cuda.py", "--work-dir", str(tmp_path))
    assert "needs onnxruntime-gpu" in line and "CPUExecutionProvider" in line
    assert not any(tmp_path.iterdir())  # nothing built first


@pytest.mark.parametrize("args, message", [
    (["--new-tokens", "1"], "--new-tokens must be from 2"),
    (["--new-tokens", "1000"], "to 992"),
    (["--prompts", "32,1023"], "--prompts must be at most 1022"),
    (["--positions", "1023"], "--positions must be at most 1022"),
])
def test_cuda_lengths_within_the_window(tmp_path, args, message):
    assert message in refused("bench_cuda.py", "--work-dir", str(tmp_path), *args)


# -- bench_decode.py ------------------------------------------------------------------

def test_decode_record_without_transformers_refused_before_building(tmp_path):
    line = refused("bench_decode.py", "--record", "--engines", "tinygen", "--work-dir", str(tmp_path))
    assert "--record needs the transformers engine" in line
    assert not any(tmp_path.iterdir())


def test_decode_no_rate_where_noise_inverts_the_timings():
    sys.path.insert(0, str(BENCH))
    import bench_decode

    inverted = bench_decode.Result("tinygen", 1, t_1=0.02, t_n=0.019, new_tokens=2)
    equal = bench_decode.Result("optimum", 1, t_1=0.02, t_n=0.02, new_tokens=2)
    fine = bench_decode.Result("transformers", 1, t_1=0.02, t_n=0.03, new_tokens=2)
    assert np.isnan(inverted.decode_tps) and np.isnan(equal.decode_tps)
    assert fine.decode_tps == pytest.approx(100)
    assert bench_decode.unmeasured([inverted, equal, fine]) == [
        "tinygen at batch 1, 2 new tokens", "optimum at batch 1, 2 new tokens"]


# -- bandwidth.py ---------------------------------------------------------------------

def test_bandwidth_size_beyond_memory():
    line = refused("bandwidth.py", "--size-mb", "1000000000")
    assert "--size-mb 1000000000 needs 3 x 1000000000 MiB" in line and "or less" in line


# -- bench_memory.py ------------------------------------------------------------------

def test_memory_folder_that_is_no_model(tmp_path):
    line = refused("bench_memory.py", str(tmp_path))
    assert f"{tmp_path}: not a tinygen model directory" in line


def test_memory_runs_out_of_range(tmp_path):
    assert "--runs and --new-tokens must be >= 1" in refused("bench_memory.py", "--runs", "0")


def test_memory_table_of_a_model(exported_llama_dir):
    result = subprocess.run([sys.executable, str(BENCH / "bench_memory.py"), str(exported_llama_dir),
                             "--runs", "1", "--new-tokens", "4"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    row = result.stdout.splitlines()[2].split("|")
    assert row[1].strip() == str(exported_llama_dir)
    imports, loaded, generated, peak, huge = (float(cell) for cell in row[2:7])
    assert 0 < imports <= loaded and generated <= peak and 0 <= huge <= peak


@pytest.mark.parametrize("args, message", [
    (["--lengths", "4,x"], "--lengths takes whole numbers >= 1"), (["--lengths", "0"], "--lengths"),
    (["--steps", "0"], "--steps must be >= 1"), (["--repeats", "-1"], "--repeats must be >= 1"),
    (["--counts", "4,"], "--counts takes whole numbers >= 1"),
])
def test_stop_strings_bench_refuses_what_it_cannot_time(args, message):
    assert message in refused("bench_stop_strings.py", *args)


def test_exclusions_bench_refuses_no_repeats():
    assert "--repeats must be >= 1" in refused("bench_exclusions.py", "--repeats", "0")


@pytest.mark.parametrize("args, message", [
    (["--repeats", "0"], "--repeats must be >= 1"), (["--block-size", "4"], "--block-size must be >= 8"),
    (["--batch-size", "-1"], "--batch-size must be >= 1"),
])
def test_padded_rows_bench_refuses_what_it_cannot_time(args, message):
    assert message in refused("bench_padded_rows.py", *args)


# -- bench_one_file_corpus.py ---------------------------------------------------------

@pytest.mark.parametrize("sizes", ["x", "0", "10,-1", "10,"])
def test_one_file_corpus_sizes_are_whole_megabytes(sizes):
    """Not a ValueError traceback, nor an empty corpus whose encode fails past the tokenizer."""
    assert refused("bench_one_file_corpus.py", "--sizes", sizes).startswith(
        "bench_one_file_corpus.py: error: argument --sizes: expected whole numbers of MB >= 1, "
        f"comma-separated, got '{sizes}'")


def test_one_file_corpus_trainer_src_without_the_trainer(tmp_path):
    """On PYTHONPATH such a folder is passed over: this checkout's trainer would be timed as
    the other one."""
    (tmp_path / "tinygen_trainer").mkdir()  # no __init__.py: not the package
    line = refused("bench_one_file_corpus.py", "--trainer-src", str(tmp_path))
    assert f"--trainer-src {tmp_path} holds no tinygen_trainer package" in line


def test_one_file_corpus_an_encode_that_fails_is_its_own_line(tmp_path, monkeypatch):
    """The encode's error line (here an older trainer's), not a CalledProcessError traceback."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_one_file_corpus import encode_once
    from script_errors import ScriptError

    trainer = tmp_path / "src" / "tinygen_trainer"
    trainer.mkdir(parents=True)
    (trainer / "__init__.py").write_text("")
    (trainer / "cli.py").write_text("import sys\nsys.exit('tinygen-train: error: too old')\n")
    corpus = tmp_path / "corpus-1.txt"
    corpus.write_text("the cat sat.")
    with pytest.raises(ScriptError) as failed:
        encode_once(corpus, tmp_path / "tokenizer.json", tmp_path / "out.tokens", tmp_path / "src")
    assert str(failed.value) == \
        "encoding corpus-1.txt failed (exit 1): tinygen-train: error: too old"
