"""Resumable checkpoints under OUTPUT/checkpoints/step-00000300/.

A checkpoint is a loadable transformers model folder (config.json,
model.safetensors, tokenizer.json) plus optimizer.pt (the optimizer state,
tensors only, read back with torch.load(weights_only=True)) and state.json:
step, data position, RNG states, loss scaler, and the options a resume must
keep. Nothing is pickled, so loading a checkpoint runs no code from it.

Writes are atomic: everything goes into a `.tmp-step-...` folder, is fsynced,
and the folder is renamed into place. A run killed mid-write leaves only a temp
folder, which readers ignore, so the previous checkpoint stays the newest.
state.json records every other file's size and sha256; a resume checks them and
skips, with a note, a checkpoint damaged since (a torn copy, a flipped byte) for
the newest one that is whole. Weights that are not finite are never written.

On a TPU pod slice one process per host trains, and only process 0 writes
(Backend.write_once); the others wait until the checkpoint is in place. A resume
reads the same checkpoint on every host: resume_point checks that all hosts see
the same newest one, which holds when --output is a folder they share.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tinygen.atomic import new_file_mode
from tinygen.errors import TinygenError
from tinygen.file_digest import file_sha256

from .device import Backend

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{8,})$")
TMP_PREFIX = ".tmp-"


def save_model_files(backend: Backend, model: torch.nn.Module, folder: Path) -> None:
    """backend.save_model, then every file as readable as a new file is: safetensors writes
    the weights private (0600), so another account serving or exporting the model (or
    resuming the run) could read its config but not its weights."""
    backend.save_model(model, folder)
    mode = new_file_mode()
    for path in folder.iterdir():
        if path.is_file():
            os.chmod(path, mode)


def save_checkpoint(output_dir: Path, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    write_tokenizer: Callable[[Path], None], keep: int,
                    backend: Backend | None = None) -> Path:
    """Write checkpoint `step` atomically, then drop all but the newest `keep`.

    `backend` writes the tensors as CPU tensors (XLA's live on the device), so
    any device can resume any other's checkpoint; None: they are written as they are.
    """
    backend = backend or Backend()
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=root))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is an ordinary folder
        save_model_files(backend, model, tmp)
        check_finite_weights(tmp, step)
        torch.save(backend.to_host(optimizer.state_dict()), tmp / OPTIMIZER_FILE)
        write_tokenizer(tmp)
        payload = {"format_version": FORMAT_VERSION, "step": step, **state,
                   "files": file_digests(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(payload) + "\n", encoding="utf-8")
        fsync_tree(tmp)
        if final.exists():  # only when an unreadable newer checkpoint was skipped on resume
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(root)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (reason := write_failure(exc)) is not None:
            raise TinygenError(f"cannot write the checkpoint of step {step} in {root}: {reason} "
                               f"(the checkpoints before it are kept)") from None
        raise
    prune(root, keep)
    return final


def write_failure(exc: BaseException) -> str | None:
    """Why a write failed (a full disk, no permission) and what to do, as one clause, or None
    when `exc` is no failed write. torch.save's zip writer does not name the cause."""
    from safetensors import SafetensorError

    text, full = str(exc), False
    if isinstance(exc, OSError):
        reason, full = exc.strerror or text, exc.errno in (errno.ENOSPC, errno.EDQUOT)
    elif isinstance(exc, SafetensorError) and "I/O error: " in text:
        reason = text.split("I/O error: ", 1)[1].split(" (os error")[0]
        full = "(os error 28)" in text or "(os error 122)" in text
    elif isinstance(exc, RuntimeError) and ("inline_container" in text
                                            or "PytorchStreamWriter" in text):
        reason, full = f"the write stopped short (is the disk full?): {text.splitlines()[0]}", True
    else:
        return None
    fix = "free some space" if full else "fix that"
    return f"{reason}; {fix}, then run the same command with --resume"


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temp folders and unreadable ones are skipped.

    Their files' digests are not checked here (prune lists them after every save).
    """
    return [path for path in _step_folders(output_dir)
            if checkpoint_problem(path, digests=False) is None]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def resume_point(output_dir: Path, backend: Backend,
                 note: Callable[[str], None] = lambda _: None) -> Path | None:
    """The newest checkpoint that is whole, the same one for every process (host), or a
    one-line error; note() hears of each newer one skipped, and why.

    Process 0 writes checkpoints, so the other hosts of a pod slice find them only
    if `output_dir` is a folder they all share; a resume from different points (or
    from none on some hosts) would train different models, so it stops here.
    """
    latest, skipped = None, []
    for path in reversed(_step_folders(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            latest = path
            break
        skipped.append(f"{path.name}: {problem}")
    seen = None
    if latest is not None:
        digest = hashlib.sha256((latest / STATE_FILE).read_bytes()).hexdigest()[:8]
        seen = f"{latest.name} (state {digest})"
    views = backend.gather(seen)
    if any(view != views[0] for view in views):
        # XLA runs one process per host; torchrun one per GPU, on one machine or several.
        who, whom, where, host = ("host", "hosts", "on a pod slice", "host") \
            if backend.name == "xla" else ("process", "processes", "on several machines", "machine")
        each = ", ".join(f"{who} {i}: {view or 'none'}" for i, view in enumerate(views))
        raise TinygenError(
            f"the {whom} see different checkpoints in {output_dir} ({each}); only process 0 "
            f"writes them, so {where} --output must be a folder every {host} shares")
    if latest is None and skipped:  # after the gather: every host reaches it, or none does
        raise TinygenError(
            f"no checkpoint in {Path(output_dir) / CHECKPOINTS} can be loaded ({skipped[0]}"
            f"{f'; and {len(skipped) - 1} more' if len(skipped) > 1 else ''}); delete that folder "
            f"to train afresh, or choose another --output")
    for line in skipped:
        note(f"skipped checkpoint {line}; resuming from {latest.name}")
    return latest


def read_state(path: Path) -> dict[str, Any]:
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise TinygenError(f"{path}: checkpoint format {state['format_version']} is newer than "
                           f"this tinygen-trainer reads ({FORMAT_VERSION}); upgrade it")
    return state


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    # weights_only: tensors and plain containers only; a tampered file cannot run code.
    state = torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    optimizer.load_state_dict(state)


def prune(root: Path, keep: int) -> None:
    complete = list_checkpoints(root.parent)
    for path in complete[:-keep]:
        # Renamed first: a run killed mid-delete leaves a temp folder, removed below next
        # time, not a half-deleted step folder that no list would ever find again.
        doomed = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{path.name}-", dir=root))
        os.rename(path, doomed / path.name)
        shutil.rmtree(doomed, ignore_errors=True)
    for path in root.glob(f"{TMP_PREFIX}*"):  # left by a run killed mid-write
        shutil.rmtree(path, ignore_errors=True)


# -- RNG state as JSON ----------------------------------------------------------

def capture_rng(backend: Backend) -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "device": backend.rng_state(),
    }


def restore_rng(state: dict[str, Any], backend: Backend) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    backend.set_rng_state(state["device"])


# -- checking what was written --------------------------------------------------------

# state.json's fields a resume reads, by type; a checkpoint may lack those added since.
_STATE_TYPES = {"tokens_seen": int, "data": list, "rng": dict, "backend": dict, "files": dict}


def checkpoint_problem(path: Path, digests: bool = True) -> str | None:
    """Why checkpoint `path` cannot be resumed from, or None if it can.

    With `digests`, every file state.json lists is read back and compared with its
    size and sha256 when written; checkpoints from before they were recorded have none.
    """
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"its {STATE_FILE} is missing or not JSON"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        return f"its {STATE_FILE} has no step"
    for name, kind in _STATE_TYPES.items():
        if name in state and not isinstance(state[name], kind):
            return f"its {STATE_FILE} has a bad {name!r}"
    if not ((path / OPTIMIZER_FILE).is_file() and (path / "config.json").is_file()
            and any(path.glob("model*.safetensors"))):
        return "it lacks its weights, config.json or optimizer.pt"
    for name, recorded in (state.get("files") or {}).items() if digests else ():
        file = path / name
        recorded = recorded if isinstance(recorded, dict) else {}
        if not file.is_file():
            return f"its {name} is missing"
        size = file.stat().st_size
        if size != recorded.get("size"):
            return f"its {name} has {size} bytes, {recorded.get('size')} when written"
        if file_sha256(file) != recorded.get("sha256"):
            return f"its {name} differs from what was written (sha256)"
    return None


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """Each file under `folder` (by relative path): its size and sha256."""
    return {path.relative_to(folder).as_posix(): {"size": path.stat().st_size,
                                                    "sha256": file_sha256(path)}
            for path in sorted(folder.rglob("*")) if path.is_file()}


def check_finite_weights(folder: Path, step: int) -> None:
    """Refuse weights holding nan or inf (a diverged run): written, they would be all that
    is left to resume from. Read back from the files, so no device computes anything more."""
    from safetensors import safe_open

    for file in sorted(folder.glob("model*.safetensors")):
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                if not torch.isfinite(weights.get_tensor(name)).all():
                    raise TinygenError(
                        f"training diverged: the weights hold nan or inf after step {step}; "
                        f"lower --lr or set --grad-clip (e.g. 1.0), then --resume from the last "
                        f"checkpoint")


# -- helpers ----------------------------------------------------------------------

def _step_folders(output_dir: Path) -> list[Path]:
    """The step-NNNNNNNN folders under output_dir/checkpoints, oldest first (temp ones left out)."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in root.iterdir()
             if (match := _NAME.match(path.name)) and path.is_dir()]
    return [path for _, path in sorted(found)]


def fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    # A rename is durable only once its folder is synced. Not possible on Windows; skip there.
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
