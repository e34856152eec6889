"""tools/tpu and tools/xla_venv.sh on --help and bad arguments: usage or a one-line error, and
never a gcloud, pip or python call (a stray argument to delete.sh must not delete the VM).

Every command the scripts could run (gcloud, python, pip, apt-get) is a fake early on PATH that
notes its arguments in calls.log, so "nothing was called" is something a test can see; the
home folder and the caches are tmp_path's, so nothing here touches the network or ~/.cache.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TPU = ROOT / "tools" / "tpu"
XLA_VENV = ROOT / "tools" / "xla_venv.sh"

FAKE = r"""#!/usr/bin/env bash
# Notes how it was called. As a python: 3.11, and `-m venv DIR` makes a venv of fakes.
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$1" in
    -V) echo "Python 3.11.7" ;;
    -m) if [[ "$2" == venv ]]; then
            mkdir -p "$3/bin" && touch "$3/pyvenv.cfg" && cp "$0" "$3/bin/python" \
                && cp "$0" "$3/bin/pip"
        fi ;;
esac
exit 0
"""

NO_ARGUMENTS = ["create.sh", "delete.sh", "setup.sh", "install.sh"]


@pytest.fixture
def fakes(tmp_path):
    """run(script, *args, **env) -> (CompletedProcess, the calls the fakes saw)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for name in ("gcloud", "python", "python3", "python3.11", "python3.12", "pip", "apt-get",
                 "sudo", "curl"):
        path = bin_dir / name
        path.write_text(FAKE)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log),
           "HOME": str(tmp_path / "home"), "TINYGEN_CACHE": str(tmp_path / "cache"),
           "XDG_CACHE_HOME": str(tmp_path / "xdg"), "TINYGEN_XLA_VENV": str(tmp_path / "venv"),
           "TINYGEN_PYTHON": str(bin_dir / "python"), "PYTHON": str(bin_dir / "python3.11"),
           "TPU_NAME": "tpu1", "TPU_ZONE": "zone-a"}
    for name in ("DRY_RUN", "TPU_PROJECT"):
        env.pop(name, None)

    def run(script: Path, *args: str, **settings: str):
        done = subprocess.run([str(script), *args], env={**env, **settings}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=30)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return done, calls

    return run


def header(script: Path) -> list[str]:
    """The script's header comment without its #s: what --help prints."""
    lines = script.read_text().splitlines()
    if lines[0].startswith("#!"):
        lines = lines[1:]
    comment = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    return [line[2:] if line.startswith("# ") else line[1:] for line in comment]


def one_line_error(done: subprocess.CompletedProcess, start: str) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(start) and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


# -- a normal call still reaches gcloud (so the fake would see a stray one) -------------------

def test_create_and_delete_call_gcloud_and_dry_run_prints_it(fakes):
    done, calls = fakes(TPU / "create.sh")
    assert done.returncode == 0, done.stderr
    assert calls == ["gcloud compute tpus tpu-vm create tpu1 --accelerator-type=v4-8 "
                     "--version=tpu-ubuntu2204-base --zone=zone-a"]
    done, calls = fakes(TPU / "delete.sh", DRY_RUN="1")
    assert done.returncode == 0 and calls == []
    assert done.stdout.split() == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tpu1",
                                   "--quiet", "--zone=zone-a"]


# -- --help: the header comment, exit 0, nothing called ---------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("name", NO_ARGUMENTS + ["launch.sh", "train.sh"])
def test_help_prints_the_usage_and_calls_nothing(fakes, tmp_path, name, flag):
    script = TPU / name
    for dry_run in ({}, {"DRY_RUN": "1"}):  # without DRY_RUN a gcloud call would be real
        done, calls = fakes(script, flag, **dry_run)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == header(script) and done.stderr == ""
        assert f"tools/tpu/{name}" in done.stdout  # how to call it
        assert calls == []
    assert not (tmp_path / "venv").exists() and not (tmp_path / "home").exists()


def test_help_after_the_arguments_starts_nothing_either(fakes, tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    for script in (TPU / "launch.sh", TPU / "train.sh"):
        done, calls = fakes(script, str(text), str(tmp_path / "out"), "--help")
        assert done.returncode == 0 and done.stdout.splitlines() == header(script)
        assert calls == [] and not (tmp_path / "out").exists()
    done, calls = fakes(TPU / "delete.sh", "--quiet", "--help")
    assert done.returncode == 0 and calls == []


# -- any other argument: one usage line, exit 2, nothing called -------------------------------

@pytest.mark.parametrize("args", [["nope"], ["--force"], ["--zone=x", "--help-me"]])
@pytest.mark.parametrize("name", NO_ARGUMENTS)
def test_an_argument_to_a_script_that_takes_none_is_refused(fakes, tmp_path, name, args):
    for dry_run in ({}, {"DRY_RUN": "1"}):
        done, calls = fakes(TPU / name, *args, **dry_run)
        error = one_line_error(done, f"usage: {TPU / name} (no arguments, got '{args[0]}'")
        assert "environment" in error
        assert calls == []
    assert not (tmp_path / "venv").exists()


def test_env_sh_run_rather_than_sourced(fakes):
    done, calls = fakes(Path("/bin/bash"), str(TPU / "env.sh"))
    one_line_error(done, "env.sh: it holds settings for the tools/tpu scripts")
    done, calls = fakes(Path("/bin/bash"), str(TPU / "env.sh"), "--help")
    assert done.returncode == 0 and done.stdout.splitlines() == header(TPU / "env.sh")
    assert calls == []
    # Run as the others are (it said "Permission denied"):
    done, calls = fakes(TPU / "env.sh", "--help")
    assert done.returncode == 0 and done.stdout.splitlines() == header(TPU / "env.sh")
    one_line_error(fakes(TPU / "env.sh")[0], "env.sh: it holds settings for the tools/tpu scripts")


def test_launch_with_too_few_arguments(fakes):
    done, calls = fakes(TPU / "launch.sh", "stories.txt")
    one_line_error(done, f"usage: {TPU / 'launch.sh'} TEXT LOCAL_OUT ")
    assert calls == []


def test_launch_without_its_local_python_says_how_to_get_one(fakes, tmp_path):
    """Not train.sh's line, whose fixes (install.sh, TINYGEN_PYTHON) are the workers'."""
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    missing = tmp_path / "no-venv" / "bin" / "python"
    for dry_run in ({}, {"DRY_RUN": "1"}):
        done, calls = fakes(TPU / "launch.sh", str(text), "model", LOCAL_PYTHON=str(missing),
                            TPU_LOCAL_DIR=str(tmp_path / "prep"), **dry_run)
        assert one_line_error(done, "launch.sh: ") == (
            f"launch.sh: no Python at {missing} to prepare the tokens here: run make dev, "
            "or set LOCAL_PYTHON to a Python with tinygen-trainer\n")
        assert calls == [] and not (tmp_path / "prep").exists()


# -- without gcloud: one line before anything runs (DRY_RUN needs none) ------------------------

@pytest.fixture
def path_without_gcloud(tmp_path) -> str:
    """PATH for the scripts with every command of this machine but gcloud (installed or not),
    the fakes first (less their gcloud)."""
    (tmp_path / "bin" / "gcloud").unlink()
    links = tmp_path / "no-gcloud"
    links.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for entry in (os.scandir(folder) if os.path.isdir(folder) else []):
            link = links / entry.name
            if entry.name != "gcloud" and not os.path.lexists(link):
                link.symlink_to(entry.path)
    return f"{tmp_path / 'bin'}:{links}"


@pytest.mark.parametrize("name", ["create.sh", "delete.sh", "setup.sh", "launch.sh"])
def test_without_gcloud_one_line_and_nothing_prepared(fakes, tmp_path, path_without_gcloud, name):
    """Not `gcloud: command not found` after launch.sh has made the tokenizer and token cache
    (minutes on a real corpus), or setup.sh has packed the checkout."""
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    args = [str(text), "model"] if name == "launch.sh" else []
    settings = dict(PATH=path_without_gcloud, LOCAL_PYTHON=str(tmp_path / "bin" / "python"),
                    TPU_LOCAL_DIR=str(tmp_path / "prep"))
    done, calls = fakes(TPU / name, *args, **settings)
    assert one_line_error(done, f"{name}: ") == (
        f"{name}: gcloud is not on PATH: install the Google Cloud CLI "
        "(https://cloud.google.com/sdk/docs/install), or set DRY_RUN=1 to print its commands\n")
    assert calls == [] and not (tmp_path / "prep").exists()
    done, _ = fakes(TPU / name, *args, DRY_RUN="1", **settings)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("gcloud compute tpus tpu-vm ")


# -- train.sh: its inputs checked before OUT is made ------------------------------------------

def test_train_with_a_missing_text_makes_nothing(fakes, tmp_path):
    done, calls = fakes(TPU / "train.sh", "nope.txt", "OUT")
    assert one_line_error(done, "train.sh: ") == "train.sh: nope.txt is not a file\n"
    assert calls == [] and not (tmp_path / "OUT").exists()


def test_train_into_a_file_or_without_its_python(fakes, tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    (tmp_path / "taken").write_text("mine")
    done, calls = fakes(TPU / "train.sh", str(text), "taken")
    assert one_line_error(done, "train.sh: ") == \
        "train.sh: OUT taken is a file, not a folder; choose another OUT\n"
    assert calls == [] and (tmp_path / "taken").read_text() == "mine"
    missing = tmp_path / "no-venv" / "bin" / "python"
    done, calls = fakes(TPU / "train.sh", str(text), "OUT", TINYGEN_PYTHON=str(missing))
    assert one_line_error(done, "train.sh: ") == (f"train.sh: no Python at {missing}: run "
                                                  "tools/tpu/install.sh, or set TINYGEN_PYTHON\n")
    assert calls == [] and not (tmp_path / "OUT").exists()


def test_train_prepares_with_good_input(fakes, tmp_path):
    """The checks let documented usage through: --prepare-only runs the tokenizer and encode."""
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    done, calls = fakes(TPU / "train.sh", str(text), "OUT", "--prepare-only")
    assert done.returncode == 0, done.stderr
    assert [call.split()[3] for call in calls] == ["tokenizer", "encode"]
    assert (tmp_path / "OUT" / "stories.txt").read_text() == "the cat sat."


# -- tools/xla_venv.sh ------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_xla_venv_help_builds_nothing(fakes, tmp_path, flag):
    done, calls = fakes(XLA_VENV, flag)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == header(XLA_VENV) and done.stderr == ""
    assert "tools/xla_venv.sh [--path | --pythonpath | --help]" in done.stdout
    assert calls == [] and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args", [["--pth"], ["build"], ["--path", "--pythonpath"], [""]])
def test_xla_venv_refuses_other_arguments(fakes, tmp_path, args):
    done, calls = fakes(XLA_VENV, *args)
    error = one_line_error(done, f"usage: {XLA_VENV} [--path | --pythonpath | --help] (got: ")
    assert error.rstrip().endswith(f"(got: {' '.join(args)})")
    assert calls == [] and not (tmp_path / "cache").exists()


def test_xla_venv_modes_the_makefile_uses(fakes, tmp_path):
    """`make test-xla`: the bare call builds (here a venv of fakes) and prints the path that
    --path names; --pythonpath prints the packages' sources."""
    done, _ = fakes(XLA_VENV, "--pythonpath")
    assert done.returncode == 0
    assert done.stdout == ":".join(f"{ROOT}/packages/{p}/src"
                                   for p in ("runtime", "trainer", "tinymodel")) + "\n"
    done, calls = fakes(XLA_VENV, "--path")
    assert done.returncode == 0 and not (tmp_path / "cache").exists()
    assert not any(" -m " in call for call in calls)  # --path builds nothing
    path = done.stdout.strip()
    assert path.startswith(f"{tmp_path}/cache/xla-venv-")
    done, calls = fakes(XLA_VENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{path}\n" and (Path(path) / ".complete").is_file()
    assert f"python3.11 -m venv {path}" in calls
    assert any(call.startswith("pip install ") for call in calls)


def test_xla_venv_killed_mid_install_is_built_again_from_scratch(fakes, tmp_path):
    """A build killed while pip installs (minutes, ~7 GB) leaves a venv without .complete: the
    next call does not take it as built, but removes it and builds anew."""
    import signal
    import time

    path = Path(fakes(XLA_VENV, "--path")[0].stdout.strip())
    python = tmp_path / "bin" / "python3.11"  # `-m venv` copies it in as pip: half installs
    python.write_text(FAKE.replace("exit 0\n", 'if [[ "$1" == install ]]; then\n'
                                '    touch "$(dirname "$0")/../half-installed"; exec sleep 60\n'
                                'fi\nexit 0\n'))
    build = subprocess.Popen([str(XLA_VENV)], env={**os.environ, "FAKE_LOG": str(tmp_path / "log"),
                             "TINYGEN_CACHE": str(tmp_path / "cache"), "PYTHON": str(python)},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while not (path / "half-installed").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)
    build.communicate()
    assert (path / "half-installed").exists() and not (path / ".complete").exists()
    python.write_text(FAKE)
    done, calls = fakes(XLA_VENV)
    assert done.returncode == 0 and done.stdout == f"{path}\n", done.stderr
    assert f"python3.11 -m venv {path}" in calls
    assert (path / ".complete").is_file() and not (path / "half-installed").exists()


# -- train.sh on a pod slice: one worker exports ----------------------------------------------

TRAINING_PYTHON = r"""#!/usr/bin/env bash
# As the XLA venv's python: notes each tinygen-train command; `train` leaves the trained model
# in TRAIN_DIR, as process 0 does (every worker sees it there when TRAIN_DIR is shared).
echo "${*:3}" >> "$FAKE_LOG"
if [[ "$3" == train ]]; then mkdir -p "$TRAIN_DIR" && echo {} > "$TRAIN_DIR/train_config.json"; fi
"""


def prepared_run(tmp_path: Path, worker: int) -> tuple[Path, Path]:
    """(TEXT, OUT) as launch.sh leaves them on one worker: the tokens made, from this text."""
    import hashlib

    out = tmp_path / f"worker-{worker}" / "run"
    text = out / "stories.txt"
    (out / "tokenizer").mkdir(parents=True)
    text.write_text("the cat sat.")
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / "train.tokens").write_text("")
    sha = hashlib.sha256(text.read_bytes()).hexdigest()
    (out / "prepared").write_text(f"{sha} vocab 16384\n")
    return text, out


@pytest.mark.parametrize("exporter", [None, "2"])
def test_train_with_a_shared_train_dir_exports_on_one_worker(fakes, tmp_path, exporter):
    """Every worker sees the model process 0 wrote to a shared TRAIN_DIR; only the worker
    launch.sh copies the model back from (TPU_MODEL_WORKER, default 0) exports it."""
    python = tmp_path / "bin" / "python"
    python.write_text(TRAINING_PYTHON)
    shared = tmp_path / "nfs" / "trained"
    chosen = int(exporter or 0)
    settings = {"TRAIN_DIR": str(shared), **({"TPU_MODEL_WORKER": exporter} if exporter else {})}
    for worker in range(4):
        text, out = prepared_run(tmp_path, worker)
        done, calls = fakes(TPU / "train.sh", str(text), str(out), "--quiet",
                            TPU_WORKER_ID=str(worker), **settings)
        assert done.returncode == 0, done.stderr
        assert [call.split()[0] for call in calls] == \
            (["train", "export"] if worker == chosen else ["train"]), (worker, calls)
        line = done.stderr.splitlines()[-1]
        assert line.startswith(f"worker {worker} (")
        if worker == chosen:
            assert calls[1] == f"export {shared} {out}/model"
            assert line.endswith(f"): exported the model to {out}/model")
        else:
            assert f"): trained; worker {chosen} exports the model" in line
