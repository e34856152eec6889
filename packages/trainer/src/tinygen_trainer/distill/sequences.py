"""Sequence-level distillation: the teacher writes a corpus, the student trains on it.

For a student whose tokenizer differs from the teacher's, the logits cannot be
compared position by position; what transfers is the text (Kim & Rush 2016).
The teacher generates through the tinygen runtime (so it must be an exported
model folder), one JSONL record per text, {"text": ..., "seed": ...}, each
seeded with seed + i so any text can be made again. The file is appended and
synced per batch; a run that finds it part-written continues after its last
complete line, if it asks for the texts the file's settings (OUTPUT.settings.json:
the teacher's files, the prompts, the sampling) made, and refuses otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from tinygen.atomic import atomic_write_text
from tinygen.errors import TinygenError

from ..bars import progress_bar


@dataclass(frozen=True)
class TextsRequest:
    teacher: Path  # an exported tinygen model folder (tinygen.json)
    output: Path  # the JSONL file to write (or continue)
    count: int  # texts in all
    prompts: tuple[str, ...] = ("",)  # text i gets prompt i mod len; "" starts a new document
    max_new_tokens: int = 256
    seed: int = 42
    batch_size: int = 16
    temperature: float = 1.0
    top_p: float = 0.95


def teacher_texts(request: TextsRequest, progress: bool = True) -> Path:
    """Write (or finish) request.count teacher texts to request.output; returns the path."""
    from tinygen import TextGenerator

    if request.count < 1:
        raise TinygenError(f"--teacher-texts must be >= 1, got {request.count}")
    if request.max_new_tokens < 1:  # the runtime would name its own max_new_tokens, not the flag
        raise TinygenError(f"--text-tokens must be >= 1, got {request.max_new_tokens}")
    if request.teacher.is_file():  # model.onnx, say
        raise TinygenError(f"--teacher {request.teacher} is a file; give the exported model's "
                           f"folder, {request.teacher.parent}")
    if not request.teacher.is_dir():  # "export it first" would send the user after a typo
        raise TinygenError(f"--teacher {request.teacher}: folder not found")
    if not (request.teacher / "tinygen.json").is_file():
        raise TinygenError(
            f"--teacher {request.teacher}: sequence-level distillation generates with the tinygen "
            f"runtime; export the teacher first: tinygen-train export {request.teacher} OUT")
    done = _complete_lines(request.output)
    _check_same_settings(request, done)
    if done >= request.count:
        return request.output
    generator = TextGenerator(request.teacher)
    # A with block closes the bar on Ctrl-C too: left to the exit, it redrew itself after
    # 'interrupted'.
    with open(request.output, "a", encoding="utf-8") as f, \
            progress_bar(request.count, "teacher texts", "text", initial=done, enabled=progress) as bar:
        for start in range(done, request.count, request.batch_size):
            count = min(request.batch_size, request.count - start)
            # Text i gets prompt i mod len and seed + i: neither depends on the batch size.
            prompts = [request.prompts[i % len(request.prompts)]
                       for i in range(start, start + count)]
            seeds = [request.seed + i for i in range(start, start + count)]
            texts = generator.generate(prompts, n=1, seed=seeds, batch_size=count,
                                       max_new_tokens=request.max_new_tokens,
                                       temperature=request.temperature, top_p=request.top_p)
            f.write("".join(json.dumps({"text": p + str(t), "seed": s}) + "\n"
                            for p, t, s in zip(prompts, texts, seeds)))
            f.flush()
            os.fsync(f.fileno())
            bar.update(count)
    return request.output


def check_written_texts(request: TextsRequest, resume: bool) -> None:
    """A run with checkpoints trained on the texts already written: writing more, or any
    without --resume, would change its data (and the resume would then refuse the file)."""
    from ..training.checkpoint import latest_checkpoint

    run = request.output.parent
    if latest_checkpoint(run) is None:
        return
    if not resume:
        raise TinygenError(f"{run} already has checkpoints; pass --resume to continue that run, "
                           f"or choose another --output")
    written = _whole_lines(request.output.read_bytes()) if request.output.is_file() else 0
    if written != request.count:
        raise TinygenError(f"the run in {run} trained on {written} teacher texts; resume with "
                           f"--teacher-texts {written}")


def _settings_path(output: Path) -> Path:
    return output.with_name(output.name + ".settings.json")


def _settings(request: TextsRequest) -> dict:
    """What decides text i (not how many there are, nor the batch size)."""
    teacher = hashlib.sha256()
    for path in sorted(p for p in request.teacher.iterdir() if p.is_file()
                       and (p.name in ("tinygen.json", "tokenizer.json") or p.name.startswith("model."))):
        teacher.update(path.name.encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                teacher.update(chunk)
    prompts = hashlib.sha256(json.dumps(request.prompts).encode()).hexdigest()
    return {"teacher": teacher.hexdigest(), "prompts": prompts,
            "text_tokens": request.max_new_tokens, "seed": request.seed,
            "temperature": request.temperature, "top_p": request.top_p}


# The settings by the command's flags, for the refusal.
FLAGS = {"teacher": "--teacher (its files)", "prompts": "--prompts", "text_tokens": "--text-tokens",
         "seed": "--seed", "temperature": "sampling temperature", "top_p": "top_p"}


def _check_same_settings(request: TextsRequest, done: int) -> None:
    """Texts written with other settings may not be continued with these: the file would mix
    two corpora. A file from before the settings were recorded is taken as it is."""
    path, settings = _settings_path(request.output), _settings(request)
    if done and path.is_file():
        try:
            written = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            written = None
        if not isinstance(written, dict):
            raise TinygenError(f"{path} is damaged; delete it and {request.output} to write the "
                               f"texts again")
        changed = [FLAGS[k] for k in settings if written.get(k) != settings[k]]
        if changed:
            raise TinygenError(f"{request.output} holds {done} text{'s' * (done != 1)} written "
                               f"with another {', '.join(changed)}; give the same, or write the "
                               f"texts into another --output")
    if not path.is_file() or not done:
        atomic_write_text(path, json.dumps(settings, indent=2) + "\n")


def _complete_lines(path: Path) -> int:
    """Records in a part-written file; a torn last line (no newline) is cut off."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return 0
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with open(path, "r+b") as f:
            f.truncate(keep)
    return _whole_lines(data)


def _whole_lines(data: bytes) -> int:
    """Lines ended by a newline: a torn last one does not count."""
    return data[:data.rfind(b"\n") + 1].count(b"\n")


