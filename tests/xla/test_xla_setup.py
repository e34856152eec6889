"""Installing and launching: the pins, one-line errors without them, the TPU scripts."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinygen import TextGenerator
from tinygen.errors import TinygenError
from tinygen_trainer.training import read_metrics
from tinygen_trainer.training.device import TORCH_XLA_PINS, TORCH_XLA_VERSION, select_backend

pytest.importorskip("torch_xla")  # the main .venv has none: skip

pytestmark = pytest.mark.xla

ROOT = Path(__file__).resolve().parents[2]
TPU = ROOT / "tools" / "tpu"


def test_pins_match_the_xla_requirements():
    pins = dict(re.findall(r"^(torch|torch-xla)==(\S+)$",
                           (ROOT / "requirements-xla.txt").read_text(), re.M))
    assert pins == {"torch": TORCH_XLA_VERSION, "torch-xla": TORCH_XLA_VERSION}
    assert torch.__version__.split("+")[0] == TORCH_XLA_VERSION
    assert importlib.metadata.version("torch-xla") == TORCH_XLA_VERSION


# -- bad input: one line naming the pins ------------------------------------------------

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


def test_with_a_mismatched_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    with pytest.raises(TinygenError) as info:
        select_backend("xla")
    assert str(info.value).startswith(
        f"--device xla: torch-xla {TORCH_XLA_VERSION} needs torch {TORCH_XLA_VERSION}, but torch "
        f"2.13.0 is installed: pip install {TORCH_XLA_PINS}")


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


def test_tpu_launch_rehearsed_on_the_cpu_device(tmp_path):
    """launch.sh end to end against a fake gcloud whose one worker is this machine."""
    bin_dir, vm_home = tmp_path / "bin", tmp_path / "vm"
    bin_dir.mkdir()
    (vm_home / "tinygen" / "tools").mkdir(parents=True)
    (vm_home / "tinygen" / "tools" / "tpu").symlink_to(TPU)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
    text = tmp_path / "stories.txt"
    text.write_text(" ".join(["the cat sat on the mat. the dog ran in the park."] * 200))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PJRT_DEVICE": "CPU",
           "FAKE_TPU_HOME": str(vm_home), "FAKE_TPU_LOG": str(tmp_path / "gcloud.log"),
           "TPU_LOCAL_DIR": str(tmp_path / "prepared"),
           "LOCAL_PYTHON": sys.executable, "TINYGEN_PYTHON": sys.executable,
           "PRESET": "cpu-tiny", "STEPS": "4", "BATCH_SIZE": "4", "BLOCK_SIZE": "32",
           "VOCAB_SIZE": "300"}
    done = subprocess.run([str(TPU / "launch.sh"), str(text), str(tmp_path / "model"),
                           "--warmup-steps", "1", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported the model to runs/stories/model" in done.stderr  # train.sh on the writer
    calls = (tmp_path / "gcloud.log").read_text().splitlines()
    assert [c.split()[3] for c in calls] == ["ssh", "scp", "ssh", "scp"]
    assert all("--worker=all" in c for c in calls[:3]) and "--worker=0" in calls[3]
    run = vm_home / "tinygen" / "runs" / "stories"
    metrics = read_metrics(run / "trained")
    assert metrics[-1]["step"] == 4 and "xla_compilations" in metrics[-1]  # trained on XLA
    text = TextGenerator(str(tmp_path / "model")).generate("the cat", do_sample=False,
                                                           max_new_tokens=4)[0]
    assert text.token_ids


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
    """On a pod slice train.sh runs on every worker; only process 0's has a model to export."""
    python, log = tmp_path / "python", tmp_path / "calls.log"
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    out, shared = tmp_path / "run", tmp_path / "shared" / "trained"
    (out / "tokenizer").mkdir(parents=True)  # launch.sh made these: train.sh keeps them
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    (out / "train.tokens").write_text("")
    text = tmp_path / "stories.txt"
    text.write_text("the cat sat.")
    env = {**os.environ, "TINYGEN_PYTHON": str(python), "FAKE_LOG": str(log),
           "TRAIN_DIR": str(shared), "STEPS": "7", "BATCH_SIZE": "32"}
    if writer:
        env["FAKE_WRITER"] = "1"
    done = subprocess.run([str(TPU / "train.sh"), str(text), str(out), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0].startswith("train ") and f" -o {shared} --resume --quiet" in calls[0]
    assert "--steps 7 --batch-size 32" in calls[0] and "--device xla" in calls[0]
    if writer:
        assert calls[1:] == [f"export {shared} {out}/model"]
        assert "exported the model to" in done.stderr
    else:
        assert calls[1:] == []
        assert "process 0 wrote the model on another worker" in done.stderr
