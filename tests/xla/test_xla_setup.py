"""Installing and launching: the pins, one-line errors without them, the TPU scripts.

The tests of torch-xla itself are marked xla: `make test-xla` runs them in the XLA venv, and
they skip where torch_xla is not installed. The scripts' tests run on fakes in the main suite.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen_trainer.training import read_metrics
from tinygen_trainer.training.device import TORCH_XLA_PINS, TORCH_XLA_VERSION, select_backend

ROOT = Path(__file__).resolve().parents[2]
TPU = ROOT / "tools" / "tpu"


def xla(test):
    """Marks a test that needs torch_xla: -m xla selects it, and the main .venv skips it."""
    has_xla = importlib.util.find_spec("torch_xla") is not None
    return pytest.mark.xla(pytest.mark.skipif(not has_xla, reason="needs torch_xla")(test))


@xla
def test_pins_match_the_xla_requirements():
    pins = dict(re.findall(r"^(torch|torch-xla)==(\S+)$",
                           (ROOT / "requirements-xla.txt").read_text(), re.M))
    assert pins == {"torch": TORCH_XLA_VERSION, "torch-xla": TORCH_XLA_VERSION}
    assert torch.__version__.split("+")[0] == TORCH_XLA_VERSION
    assert importlib.metadata.version("torch-xla") == TORCH_XLA_VERSION


# -- bad input: one line naming the pins ------------------------------------------------

@xla
def test_without_torch_xla(monkeypatch):
    real_version, real_find_spec = importlib.metadata.version, importlib.util.find_spec

    def version(name):
        if name == "torch-xla":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_xla" else real_find_spec(name, *a))
    with pytest.raises(TinygenError) as info:
        select_backend("xla")
    message = str(info.value)
    assert message.startswith(f"--device xla needs torch_xla: pip install {TORCH_XLA_PINS}")
    assert "\n" not in message


@xla
def test_with_a_mismatched_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(TinygenError) as info:
        select_backend("xla")
    assert str(info.value).startswith(
        f"--device xla: torch-xla {TORCH_XLA_VERSION} needs torch {TORCH_XLA_VERSION}, but torch "
        f"2.13.0 is installed: pip install {TORCH_XLA_PINS}")


@xla
@pytest.mark.parametrize("setup, expected", [
    # torch_xla cannot be imported at all
    ("sys.modules['torch_xla'] = None", "--device xla needs torch_xla"),
    # the torch next to it is another release
    ("import torch; torch.__version__ = '2.13.0+cpu'", "but torch 2.13.0 is installed"),
])
def test_the_command_says_it_in_one_line(setup, expected, corpus, tokenizer, tmp_path):
    code = (f"import sys; {setup}; from tinygen_trainer.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    args = ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(tmp_path / "out"), "--device", "xla", "--quiet"]
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1
    assert done.stderr.startswith("tinygen-train: error: ") and expected in done.stderr
    assert TORCH_XLA_PINS in done.stderr


@xla
def test_a_pjrt_device_with_no_device_is_one_line(corpus, tokenizer, tmp_path):
    """A misspelt PJRT_DEVICE (or TPU where there is no libtpu) failed with torch-xla's
    traceback when the runtime started."""
    args = ["train", str(corpus), "--preset", "cpu-tiny", "--tokenizer", str(tokenizer),
            "-o", str(tmp_path / "out"), "--device", "xla", "--quiet"]
    done = subprocess.run([sys.executable, "-m", "tinygen_trainer.cli", *args],
                          env={**os.environ, "PJRT_DEVICE": "cpu"},  # names are upper case
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("tinygen-train: error: --device xla: PJRT_DEVICE=cpu gives no "
                                  "XLA device (No PjRtPlugin registered for: cpu"), done.stderr
    assert done.stderr.count("\n") == 1 and "PJRT_DEVICE=CPU to try it here" in done.stderr
    assert not (tmp_path / "out").exists()


# -- tools/tpu ----------------------------------------------------------------------------

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stands in for gcloud: a TPU VM of one worker whose home folder is $FAKE_TPU_HOME.
echo "$*" >> "$FAKE_TPU_LOG"
[[ "$1 $2 $3" == "compute tpus tpu-vm" ]] || exit 9
shift 3
sub="$1"
shift
args=() command=""
for a in "$@"; do
    case "$a" in
        --command=*) command="${a#--command=}" ;;
        -*) ;;
        *) args+=("$a") ;;
    esac
done
on_vm() { if [[ "$1" == *:* ]]; then echo "$FAKE_TPU_HOME/${1#*:}"; else echo "$1"; fi; }
case "$sub" in
    ssh) cd "$FAKE_TPU_HOME" && HOME="$FAKE_TPU_HOME" bash -c "$command" ;;
    scp) cp -r "$(on_vm "${args[0]}")" "$(on_vm "${args[1]}")" ;;
    *) exit 9 ;;
esac
"""


def test_tpu_scripts_print_their_gcloud_commands():
    env = {**os.environ, "DRY_RUN": "1", "TPU_NAME": "tpu1", "TPU_ZONE": "zone-a"}
    created = subprocess.run([str(TPU / "create.sh")], env=env, capture_output=True, text=True,
                             check=True).stdout
    assert created.split() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tpu1",
                               "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base",
                               "--zone=zone-a"]
    setup = subprocess.run([str(TPU / "setup.sh")], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [line.split()[4] for line in setup] == ["scp", "ssh"]
    assert all("--worker=all" in line for line in setup)
    assert "tools/tpu/install.sh" in setup[1]


@xla
def test_tpu_launch_rehearsed_on_the_cpu_device(tmp_path):
    """launch.sh end to end against a fake gcloud whose one worker is this machine."""
    _, vm_home, env = fake_vm(tmp_path)
    text = tmp_path / "stories.txt"
    text.write_text(" ".join(["the cat sat on the mat. the dog ran in the park."] * 200))
    env = {**env, "PJRT_DEVICE": "CPU", "TPU_LOCAL_DIR": str(tmp_path / "prepared"),
           "LOCAL_PYTHON": sys.executable, "TINYGEN_PYTHON": sys.executable,
           "PRESET": "cpu-tiny", "STEPS": "4", "BATCH_SIZE": "4", "BLOCK_SIZE": "32",
           "VOCAB_SIZE": "300", "TPU_WORKER_ID": "0"}
    done = subprocess.run([str(TPU / "launch.sh"), str(text), str(tmp_path / "model"),
                           "--warmup-steps", "1", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    name = f"stories-{sha256(text)[:12]}"  # the run is the text's: its name and content
    # train.sh on the writer says which worker it is
    assert re.search(rf"^worker 0 \(.*\): exported the model to runs/{name}/model$",
                     done.stderr, re.M), done.stderr[-3000:]
    calls = (tmp_path / "gcloud.log").read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["ssh", "scp", "ssh", "scp"]
    assert all("--worker=all" in c for c in calls[:3]) and "--worker=0" in calls[3]
    run = vm_home / "tinygen" / "runs" / name
    metrics = read_metrics(run / "trained")
    assert metrics[-1]["step"] == 4 and "xla_compilations" in metrics[-1]  # trained on XLA
    text = TextGenerator(str(tmp_path / "model")).generate("the cat", do_sample=False,
                                                           max_new_tokens=4)[0]
    assert text.token_ids


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def fake_vm(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A bin folder with the fake gcloud, the fake VM's home (this checkout's tools/tpu in its
    repository) and the environment for them; the gcloud log is tmp_path/gcloud.log."""
    bin_dir, vm_home = tmp_path / "bin", tmp_path / "vm"
    bin_dir.mkdir()
    (vm_home / "tinygen" / "tools").mkdir(parents=True)
    (vm_home / "tinygen" / "tools" / "tpu").symlink_to(TPU)
    executable(bin_dir / "gcloud", FAKE_GCLOUD)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TPU_HOME": str(vm_home),
           "FAKE_TPU_LOG": str(tmp_path / "gcloud.log")}
    return bin_dir, vm_home, env


FAKE_TRAINER = r"""#!/usr/bin/env bash
# Stands in for python -m tinygen_trainer.cli: notes each command; every output carries the
# first line of the text it was made from, so a test can tell a fresh one from a stale one.
echo "${*:3}" >> "$FAKE_LOG"
case "$3" in
    tokenizer) mkdir -p "$(dirname "$6")" && head -n 1 "$4" > "$6" ;;
    encode) cat "$6" > "$8" ;;
    train) args=("$@"); for i in "${!args[@]}"; do
               [[ "${args[i]}" == -o ]] && trained="${args[i + 1]}"; done
           mkdir -p "$trained" && cp "$(dirname "$4")/train.tokens" "$trained/train_config.json" ;;
    export) mkdir -p "$5" && cp "$4/train_config.json" "$5/tinygen.json" ;;
esac
"""


def test_tpu_launch_again_resumes_and_an_edited_text_is_prepared_again(tmp_path):
    """launch.sh twice, then with the text edited; the text's name has a space."""
    bin_dir, vm_home, env = fake_vm(tmp_path)
    trainer, log = executable(bin_dir / "fake-python", FAKE_TRAINER), tmp_path / "calls.log"
    env.update(LOCAL_PYTHON=str(trainer), TINYGEN_PYTHON=str(trainer), FAKE_LOG=str(log),
               TPU_LOCAL_DIR=str(tmp_path / "prepared"), TPU_WORKER_ID="0")
    text, model = tmp_path / "my stories.txt", tmp_path / "models" / "model"
    runs = vm_home / "tinygen" / "runs"

    def launch(*flags) -> list[str]:
        log.write_text("")
        done = subprocess.run([str(TPU / "launch.sh"), str(text), str(model), *flags], env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [call.split()[0] for call in log.read_text().splitlines()]

    text.write_text("the first text\n")
    run = runs / f"my_stories-{sha256(text)[:12]}"
    assert launch("--quiet") == ["tokenizer", "encode", "train", "export"]
    files = sorted(p.relative_to(run) for p in run.rglob("*"))
    assert (run / "my stories.txt").read_text() == "the first text\n"
    assert (model / "tinygen.json").read_text() == "the first text\n"
    # the remote command quotes the text's name
    assert "train.sh runs/" + run.name + "/my\\ stories.txt runs/" + run.name + " --quiet" \
        in (tmp_path / "gcloud.log").read_text()

    # Again: the same run resumes, in the same folder (nothing nested), and the model there
    # replaces the one here (not copied into it).
    assert launch() == ["train", "export"]
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == files
    assert sorted(p.name for p in model.iterdir()) == ["tinygen.json"]
    assert [p.name for p in model.parent.iterdir()] == ["model"]  # no staging folder left

    # An edited text is prepared again and trains a run of its own.
    text.write_text("the second text\n")
    assert launch() == ["tokenizer", "encode", "train", "export"]
    edited = runs / f"my_stories-{sha256(text)[:12]}"
    assert edited != run and (edited / "tokenizer" / "tokenizer.json").read_text() == \
        "the second text\n"
    assert (model / "tinygen.json").read_text() == "the second text\n"
    assert sorted(p.name for p in runs.iterdir()) == sorted([run.name, edited.name])

    # DRY_RUN=1 prepares (already done) and prints the gcloud commands; the model stays.
    env["DRY_RUN"] = "1"
    (tmp_path / "gcloud.log").unlink()
    assert launch() == []
    assert not (tmp_path / "gcloud.log").exists()
    assert (model / "tinygen.json").read_text() == "the second text\n"


def test_tpu_launch_keeps_a_local_out_that_is_not_a_model(tmp_path):
    _, _, env = fake_vm(tmp_path)
    text, out = tmp_path / "stories.txt", tmp_path / "notes"
    text.write_text("the cat sat.")
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    done = subprocess.run([str(TPU / "launch.sh"), str(text), str(out)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (f"launch.sh: {out} is neither empty nor a tinygen model to replace; "
                           "choose a new LOCAL_OUT\n")
    assert not (tmp_path / "gcloud.log").exists()


def test_tpu_train_prepares_again_when_the_text_or_vocabulary_changes(tmp_path):
    trainer, log = executable(tmp_path / "fake-python", FAKE_TRAINER), tmp_path / "calls.log"
    text, out = tmp_path / "stories.txt", tmp_path / "run"
    env = {**os.environ, "TINYGEN_PYTHON": str(trainer), "FAKE_LOG": str(log)}

    def prepare(**settings) -> list[str]:
        log.write_text("")
        subprocess.run([str(TPU / "train.sh"), str(text), str(out), "--prepare-only"],
                       env={**env, **settings}, check=True, timeout=60)
        return [call.split()[0] for call in log.read_text().splitlines()]

    text.write_text("the cat sat.\n")
    assert prepare() == ["tokenizer", "encode"]
    assert prepare() == []
    text.write_text("the dog ran.\n")
    assert prepare() == ["tokenizer", "encode"]
    assert (out / "train.tokens").read_text() == "the dog ran.\n"
    assert prepare(VOCAB_SIZE="300") == ["tokenizer", "encode"]
    assert prepare(VOCAB_SIZE="300") == []


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                   check=True, capture_output=True)


def test_tpu_setup_ships_the_working_tree_and_removes_what_was_deleted(tmp_path):
    """setup.sh from a scratch checkout: a tracked file deleted but not committed is no error,
    and it goes from the worker too; new files go, ignored ones do not, runs/ stays."""
    _, vm_home, env = fake_vm(tmp_path)
    shutil.rmtree(vm_home / "tinygen")
    repo = tmp_path / "checkout"
    (repo / "tools" / "tpu").mkdir(parents=True)
    for script in ("env.sh", "setup.sh"):
        shutil.copy(TPU / script, repo / "tools" / "tpu")
    executable(repo / "tools" / "tpu" / "install.sh",
               '#!/usr/bin/env bash\necho "$PWD" >> "$HOME/installed"\n')
    for name in ("kept.txt", "deleted.txt", "docs/old name.md"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(name)
    (repo / ".gitignore").write_text("ignored/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "scratch")
    setup = repo / "tools" / "tpu" / "setup.sh"
    subprocess.run([str(setup)], env=env, check=True, capture_output=True, timeout=60)
    tree = vm_home / "tinygen"
    assert (tree / "deleted.txt").is_file() and (tree / "docs" / "old name.md").is_file()
    (tree / "runs" / "stories").mkdir(parents=True)  # a run's checkpoints, on the worker only
    (tree / "runs" / "stories" / "state.json").write_text("{}")

    (repo / "deleted.txt").unlink()  # deleted, not committed
    git(repo, "mv", "docs/old name.md", "docs/new name.md")
    (repo / "new.txt").write_text("new")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "venv.bin").write_text("big")
    done = subprocess.run([str(setup)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shipped = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert shipped == [".gitignore", ".tinygen-shipped", "docs/new name.md", "kept.txt",
                       "new.txt", "runs/stories/state.json", "tools/tpu/env.sh",
                       "tools/tpu/install.sh", "tools/tpu/setup.sh"]
    assert (vm_home / "installed").read_text().splitlines() == [str(tree)] * 2  # each time


FAKE_INTERPRETER = r"""#!/usr/bin/env bash
# A fake python VERSION: answers install.sh's version check and makes a venv of fakes (its
# python is this script again, its pip notes what it is asked and does nothing).
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$1" in
    -c) if [[ "$2" == *ensurepip* ]]; then echo VERSION; fi ;;
    -V) echo "Python VERSION.0" ;;
    -m) if [[ "$2" == venv ]]; then
            mkdir -p "$3/bin" && touch "$3/pyvenv.cfg" && cp "$0" "$3/bin/python" \
                && cp "$0" "$3/bin/pip"
        fi ;;
esac
"""

FAKE_APT_GET = r"""#!/usr/bin/env bash
# A fake apt-get whose `install` puts a fake python3.11 beside it.
echo "apt-get $*" >> "$FAKE_LOG"
if [[ " $* " == *" install "* ]]; then cp "$FAKE_PYTHON311" "$(dirname "$0")/python3.11"; fi
"""


@pytest.mark.parametrize("case", ["python3 is 3.10", "python3.11", "python3.12 and 3.11",
                                  "a venv of 3.10", "apt installs 3.11"])
def test_tpu_install_picks_a_python_the_pins_can_use(tmp_path, case):
    """install.sh on a worker whose python3 is 3.10 (Ubuntu 22.04) with a PATH of fakes."""
    bin_dir, log, venv = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "venv"
    bin_dir.mkdir()
    for tool in ("bash", "env", "dirname", "grep", "rm", "mkdir", "cp", "touch", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool))

    def interpreter(path: Path, version: str) -> Path:
        return executable(path, FAKE_INTERPRETER.replace("VERSION", version))

    interpreter(bin_dir / "python3", "3.10")
    python311 = interpreter(tmp_path / "python3.11", "3.11")
    if case in ("python3.11", "python3.12 and 3.11", "a venv of 3.10"):
        shutil.copy(python311, bin_dir)
    if case == "python3.12 and 3.11":
        interpreter(bin_dir / "python3.12", "3.12")
    if case == "apt installs 3.11":
        executable(bin_dir / "apt-get", FAKE_APT_GET)
        executable(bin_dir / "sudo", '#!/usr/bin/env bash\n[[ "$1" == -n ]] && shift\nexec "$@"\n')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "FAKE_LOG": str(log),
           "FAKE_PYTHON311": str(python311), "TINYGEN_XLA_VENV": str(venv)}
    if case == "a venv of 3.10":  # made by an install.sh from before the check
        subprocess.run([str(bin_dir / "python3"), "-m", "venv", str(venv)], env=env, check=True)
    log.write_text("")
    done = subprocess.run([str(TPU / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    calls = log.read_text().splitlines()
    if case == "python3 is 3.10":
        assert done.returncode == 1
        assert done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("install.sh: requirements-xla.txt needs Python >= 3.11 ")
        assert "(Python 3.10.0)" in done.stderr
        assert not venv.exists()
        return
    assert done.returncode == 0, done.stderr
    chosen = "python3.12" if case == "python3.12 and 3.11" else "python3.11"
    assert f"{chosen} -m venv {venv}" in calls
    assert f"pip install -q --no-deps -e {ROOT}/packages/runtime -e {ROOT}/packages/trainer" \
        in calls
    if case == "a venv of 3.10":
        assert f"install.sh: {venv} is not a Python >= 3.11 venv; making it again with " \
            f"python3.11\n" == done.stderr
    if case == "apt installs 3.11":
        assert [c for c in calls if c.startswith("apt-get")] == [
            "apt-get -y -q update", "apt-get -y -q install python3.11 python3.11-venv"]


FAKE_PYTHON_V = r"""#!/usr/bin/env bash
# A fake Python whose version is $FAKE_VERSION, for tools/xla_venv.sh's check and key.
case "$1" in
    -V) echo "Python $FAKE_VERSION" ;;
    -c) [[ "$FAKE_VERSION" != 3.10.* ]] ;;
esac
"""


def test_xla_venv_key_covers_the_requirements_the_script_and_the_python(tmp_path):
    clone = tmp_path / "clone"
    (clone / "tools").mkdir(parents=True)
    script = Path(shutil.copy(ROOT / "tools" / "xla_venv.sh", clone / "tools"))
    requirements = Path(shutil.copy(ROOT / "requirements-xla.txt", clone))
    python = executable(tmp_path / "python", FAKE_PYTHON_V)
    cache = tmp_path / "cache"

    def venv(version="3.11.7") -> subprocess.CompletedProcess:
        env = {**os.environ, "PYTHON": str(python), "FAKE_VERSION": version,
               "TINYGEN_CACHE": str(cache)}
        return subprocess.run([str(script), "--path"], env=env, capture_output=True, text=True,
                              timeout=60)

    def path(version="3.11.7") -> str:
        done = venv(version)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    first = path()
    assert re.fullmatch(re.escape(f"{cache}/xla-venv-") + "[0-9a-f]{64}", first)
    assert path() == first and not cache.exists()  # the same key; --path builds nothing
    assert path("3.11.8") != first  # another Python
    original = requirements.read_text()
    requirements.write_text(original + "# a comment\n")
    assert path() != first  # other requirements
    requirements.write_text(original)
    assert path() == first
    script.write_text(script.read_text() + "# a comment\n")
    assert path() != first  # another build script
    old = venv("3.10.12")
    assert old.returncode == 1 and old.stdout == ""
    assert old.stderr == (f"xla_venv.sh: requirements-xla.txt needs Python >= 3.11, and {python} "
                          "is Python 3.10.12: set PYTHON to one\n")


FAKE_BUILDER = r"""#!/usr/bin/env bash
# A fake Python 3.11 that tools/xla_venv.sh builds with: `-m venv DIR` makes a venv whose
# python and pip are this script again; everything else succeeds and does nothing.
case "$1" in
    -V) echo "Python 3.11.7" ;;
    -m) if [[ "$2" == venv ]]; then
            mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/pip"
        fi ;;
esac
exit 0
"""

FAKE_RM = r"""#!/usr/bin/env bash
# rm, noting each call and the .complete markers in the cache as it starts.
echo "rm $* | $(cd "$TINYGEN_CACHE" && echo xla-venv-*/.complete)" >> "$FAKE_LOG"
exec REAL_RM "$@"
"""


def xla_venv_env(tmp_path: Path) -> dict:
    """The environment for tools/xla_venv.sh to build a venv of fakes in tmp_path/cache, with
    a PATH whose rm notes its calls in tmp_path/rm.log."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "rm", FAKE_RM.replace("REAL_RM", shutil.which("rm")))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHON": str(executable(tmp_path / "python3.11", FAKE_BUILDER)),
            "TINYGEN_CACHE": str(tmp_path / "cache"), "FAKE_LOG": str(tmp_path / "rm.log")}


def other_venv(cache: Path, name: str, complete: bool, days: float) -> Path:
    """A venv of another key with its log and lock: complete and last used DAYS ago, or a
    build begun DAYS ago that never finished."""
    venv = cache / f"xla-venv-{name}"
    (venv / "bin").mkdir(parents=True)
    Path(f"{venv}.log").touch()
    Path(f"{venv}.lock").touch()
    age = time.time() - days * 24 * 3600
    if complete:
        (venv / ".complete").touch()
        os.utime(venv / ".complete", (age, age))
    os.utime(venv, (age, age))
    return venv


def locked(path: str):
    """An open file holding flock on PATH, as a caller of tools/xla_venv.sh holds its venv's."""
    held = open(path, "a")
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


def test_xla_venv_deletes_other_keys_unused_or_dead_unless_locked(tmp_path):
    """Complete venvs of other keys go after two weeks unused, builds that died (no .complete)
    after a day; neither while another caller holds its lock."""
    env, cache = xla_venv_env(tmp_path), tmp_path / "cache"
    kept = {"dead-for-an-hour": (False, 1 / 24), "dead-but-locked": (False, 2),
            "used-3-days-ago": (True, 3), "unused-but-locked": (True, 20)}
    gone = {"dead-for-2-days": (False, 2), "unused-for-20-days": (True, 20)}
    for name, (complete, days) in {**kept, **gone}.items():
        other_venv(cache, name, complete, days)
    holders = [locked(f"{cache}/xla-venv-{name}.lock") for name in kept if "locked" in name]
    try:
        done = subprocess.run([str(ROOT / "tools" / "xla_venv.sh")], env=env, capture_output=True,
                              text=True, timeout=60)
    finally:
        for held in holders:
            held.close()
    assert done.returncode == 0, done.stderr
    venv = Path(done.stdout.strip())
    assert (venv / ".complete").is_file()
    left = sorted(path.name for path in cache.iterdir())
    assert left == sorted(f"{dir.name}{end}" for dir in [venv, *(cache / f"xla-venv-{name}"
                                                                 for name in kept)]
                          for end in ("", ".log", ".lock"))


def test_xla_venv_deletes_the_marker_before_the_venv(tmp_path):
    """A caller that checks .complete while an old venv is being deleted must not find it:
    the marker goes first, then the folder."""
    env, cache = xla_venv_env(tmp_path), tmp_path / "cache"
    old = other_venv(cache, "unused-for-20-days", True, 20)
    done = subprocess.run([str(ROOT / "tools" / "xla_venv.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not old.exists()
    calls = (tmp_path / "rm.log").read_text().splitlines()
    removing = [call for call in calls if call.startswith(f"rm -rf {old} ")]
    assert len(removing) == 1, calls
    assert f"{old.name}/.complete" not in removing[0].split(" | ")[1], calls


def waits_on(path: Path, deadline: float, build: subprocess.Popen) -> bool:
    """Whether a process waits for the flock on PATH (as /proc/locks shows it) before BUILD
    exits or the deadline passes."""
    inode = path.stat().st_ino
    while build.poll() is None and time.monotonic() < deadline:
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "->" in fields and any(f.count(":") == 2 and int(f.rsplit(":", 1)[1]) == inode
                                      for f in fields):
                return True
        time.sleep(0.02)
    return False


def test_xla_venv_locks_again_when_its_lock_file_was_deleted(tmp_path):
    """A cleanup deletes an old venv's lock file while holding it; a caller that was waiting on
    that file then holds a lock nobody else sees, so it locks the file there now instead of
    building alongside the next caller."""
    env, cache = xla_venv_env(tmp_path), tmp_path / "cache"
    cache.mkdir()
    path = subprocess.run([str(ROOT / "tools" / "xla_venv.sh"), "--path"], env=env,
                          capture_output=True, text=True, check=True).stdout.strip()
    lock = Path(f"{path}.lock")
    cleanup = locked(str(lock))
    build = subprocess.Popen([str(ROOT / "tools" / "xla_venv.sh")], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        assert waits_on(lock, deadline, build), "it did not wait for the lock"
        lock.unlink()  # the cleanup deletes the lock file, and a new caller makes another
        next_caller = locked(str(lock))
        cleanup.close()
        assert waits_on(lock, deadline, build), "it went on with the deleted lock file"
        assert not Path(path, ".complete").exists()
        next_caller.close()
        build.wait(timeout=60)
    finally:
        build.kill()
        out, err = build.communicate()
    assert build.returncode == 0, err
    assert out == f"{path}\n" and Path(path, ".complete").is_file()


@xla
def test_these_tests_run_in_the_venv_the_script_names():
    """`make test-xla` runs here in tools/xla_venv.sh's venv: the one its key names now."""
    if not Path(sys.prefix).name.startswith("xla-venv-"):
        pytest.skip(f"not run in a venv tools/xla_venv.sh built ({sys.prefix})")
    named = subprocess.run([str(ROOT / "tools" / "xla_venv.sh"), "--path"], capture_output=True,
                           text=True, check=True, timeout=60).stdout.strip()
    assert Path(named).resolve() == Path(sys.prefix).resolve()


FAKE_PYTHON = r"""#!/usr/bin/env bash
# Stands in for the XLA venv's python: notes each tinygen-train command; `train` writes the
# trained model only as process 0 does (FAKE_WRITER=1).
echo "${*:3}" >> "$FAKE_LOG"
if [[ "$3" == train && -n "${FAKE_WRITER:-}" ]]; then
    mkdir -p "$TRAIN_DIR" && echo {} > "$TRAIN_DIR/train_config.json"
fi
"""


@pytest.mark.parametrize("writer", [True, False])
def test_tpu_train_exports_only_where_process_0_wrote_the_model(tmp_path, writer):
    """The exporting worker (TPU_MODEL_WORKER) exports only where process 0 wrote the model:
    with a TRAIN_DIR of its own, that is on process 0's worker alone."""
    python, log = tmp_path / "python", tmp_path / "calls.log"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    out, shared = tmp_path / "run", tmp_path / "shared" / "trained"
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    (out / "tokenizer").mkdir(parents=True)  # launch.sh made these: train.sh keeps them
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / "train.tokens").write_text("")
    (out / "prepared").write_text(f"{sha256(text)} vocab 16384\n")  # from this text
    env = {**os.environ, "TINYGEN_PYTHON": str(python), "FAKE_LOG": str(log),
           "TRAIN_DIR": str(shared), "STEPS": "7", "BATCH_SIZE": "32", "TPU_WORKER_ID": "3",
           "TPU_MODEL_WORKER": "3"}
    if writer:
        env["FAKE_WRITER"] = "1"
    done = subprocess.run([str(TPU / "train.sh"), str(text), str(out), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("train ") and f" -o {shared} --resume --quiet" in calls[0]
    assert "--steps 7 --batch-size 32" in calls[0] and "--device xla" in calls[0]
    # each says which worker it is: the number TPU_MODEL_WORKER takes
    if writer:
        assert calls[1:] == [f"export {shared} {out}/model"]
        assert done.stderr.startswith("worker 3 (")
        assert done.stderr.endswith(f"): exported the model to {out}/model\n")
    else:
        assert calls[1:] == []
        assert done.stderr.startswith("worker 3 (")
        assert done.stderr.endswith("): trained; process 0 wrote the model on another worker: "
                                    "launch again with TPU_MODEL_WORKER set to the worker whose "
                                    "TRAIN_DIR has it\n")


def test_a_worker_holding_the_model_names_itself_when_another_exports(tmp_path):
    """Process 0 ran on worker 3 and TRAIN_DIR is its own: worker 0 exports (and finds
    nothing), so worker 3 says how to export from it."""
    python, log = tmp_path / "python", tmp_path / "calls.log"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    out, trained = tmp_path / "run", tmp_path / "trained"
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / "train.tokens").write_text("")
    (out / "prepared").write_text(f"{sha256(text)} vocab 16384\n")
    env = {**os.environ, "TINYGEN_PYTHON": str(python), "FAKE_LOG": str(log),
           "TRAIN_DIR": str(trained), "TPU_WORKER_ID": "3", "FAKE_WRITER": "1"}
    env.pop("TPU_MODEL_WORKER", None)
    done = subprocess.run([str(TPU / "train.sh"), str(text), str(out), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [c for c in log.read_text().splitlines() if c.startswith("export")] == []
    assert done.stderr.endswith("): trained; worker 0 exports the model (it is here too: if "
                                "worker 0 finds none, launch again with TPU_MODEL_WORKER=3)\n")
