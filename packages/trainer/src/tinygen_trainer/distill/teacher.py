"""The teacher side of distillation: load a teacher, score a corpus into a teacher cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tinygen.atomic import check_parents
from tinygen.errors import TinygenError

from ..data.dataset import TokenDataset
from ..data.encoder import Encoder
from ..training.config import TrainConfig
from ..export.source import check_model_folder, folder_kind, load_causal_lm
from ..folder_tokenizer import has_slow_tokenizer
from ..training.setup import build_encoder, load_hf_config, model_window
from .teacher_cache import (MANIFEST, TeacherCache, build_teacher_cache, teacher_fingerprint,
                            torch_scorer)


@dataclass(frozen=True)
class CacheRequest:
    """What `tinygen-train teacher-cache` computes; the same request resumes the same cache."""

    teacher: Path  # a transformers causal-LM folder
    corpora: tuple[Path, ...]  # text files, folders, CSV/JSONL or token caches (teacher's tokenizer)
    output: Path  # the cache folder
    block_size: int = 256
    top_k: int = 32
    num_blocks: int | None = None  # None: every block of the corpus
    seed: int = 42
    batch_size: int = 4
    max_minutes: float | None = None  # stop after this long; run again to continue
    field: str | None = None
    errors: str = "strict"  # bytes that are not UTF-8: refused, or read as U+FFFD ("replace")
    progress: bool = True
    resizable: bool = True  # False: a run trained on the cache, so num_blocks must stay its own
    # The student's TrainConfig (distill builds the cache): its tokenizer must be the teacher's.
    student: TrainConfig | None = None


def teacher_encoder(teacher: Path, corpora: Sequence[Path], output: Path) -> Encoder:
    """The teacher's tokenizer, end-of-text id and replacement rules, as training would use them."""
    # Said here: build_encoder's advice (--tokenizer FILE) is for train, which has that option.
    if not (teacher / "tokenizer.json").is_file() and not has_slow_tokenizer(teacher):
        raise TinygenError(f"--teacher {teacher}: has no tokenizer.json (nor vocab.json + "
                           f"merges.txt); save the teacher's tokenizer into the folder")
    encoder, added = build_encoder(TrainConfig(output_dir=output, data=tuple(corpora),
                                               model=teacher))
    if added:
        raise TinygenError(f"{teacher}: its tokenizer lacks tokens its replacement rules need")
    return encoder


def refuse_other_tokenizer(where: str | Path, teacher: dict, encoder: Encoder) -> None:
    """A cache holds the teacher's token ids: `teacher` (the cache's manifest, or the teacher's
    encoder's describe()) must name the student's tokenizer and replacement rules. `where`
    (the cache, or --teacher) begins the error."""
    if teacher.get("tokenizer_sha256") != encoder.fingerprint:
        raise TinygenError(
            f"{where}: the teacher's tokenizer differs from the student's; logit "
            f"distillation needs one tokenizer (use sequence-level: --teacher-texts N)")
    if teacher.get("replacements_sha256") != encoder.replacements_fingerprint:
        raise TinygenError(f"{where}: the teacher's replacement rules differ from the "
                           f"student's; logit distillation needs the same tokenizer and rules")


def load_corpus(corpora: Sequence[Path], encoder: Encoder, field: str | None = None,
                progress: bool = True, errors: str = "strict") -> TokenDataset:
    """Every corpus encoded (or read from its token cache) and joined into one stream."""
    parts = [TokenDataset.from_path(p, encoder, field=field, errors=errors, progress=progress)
             for p in corpora]
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.num_tokens for p in parts[:-1]])
    return TokenDataset(np.concatenate([p.tokens for p in parts]),
                        np.concatenate([p.doc_ends + o for p, o in zip(parts, offsets)]),
                        encoder.eos_id, ", ".join(str(c) for c in corpora))


def check_teacher(teacher: Path):
    """The teacher's transformers config, once its folder is known to load (cheap)."""
    if teacher.is_file():  # its weights or config, say
        raise TinygenError(f"--teacher {teacher} is a file; give the model's folder, "
                           f"{teacher.parent}")
    if not teacher.is_dir():
        raise TinygenError(f"--teacher {teacher}: folder not found")
    if not (teacher / "config.json").is_file():
        raise TinygenError({
            "export": f"--teacher {teacher} is an exported tinygen model, which scores no "
                      f"corpus: give the transformers folder it was exported from, or "
                      f"--teacher-texts N to distill from texts it writes",
            "run": f"--teacher {teacher}: a training run that did not finish (no model saved "
                   f"yet); finish it with --resume, or give one of its checkpoints "
                   f"({teacher / 'checkpoints'}/step-N)",
            "other": f"--teacher {teacher}: not a transformers model folder (no config.json); "
                     f"a GGUF file must be converted to one first",
        }[folder_kind(teacher)])
    check_model_folder(teacher, f"--teacher {teacher}")
    return load_hf_config(teacher)


def load_teacher(teacher: Path):
    """The teacher in eval mode, fp32, on the GPU when there is one."""
    import torch

    check_teacher(teacher)
    model = load_causal_lm(teacher, f"--teacher {teacher}").eval()
    return model.to("cuda") if torch.cuda.is_available() else model


def cache_teacher(request: CacheRequest) -> TeacherCache:
    """Build (or continue) the cache `request` describes; returns it, complete or not."""
    # Checked before the corpus is encoded, which can take longer than the checks by far.
    config = check_teacher(request.teacher)
    if request.output.exists() and not request.output.is_dir():  # mkdir's traceback, after the work
        raise TinygenError(f"-o {request.output} is a file; a teacher cache is a folder: choose "
                           f"another -o")
    # Shards written among other files (the teacher's own folder, given as -o by a slip) mix
    # a cache into what the folder was; only a cache there is continued.
    others = sorted(p.name for p in request.output.iterdir() if not p.name.startswith(".")) \
        if request.output.is_dir() and not (request.output / MANIFEST).is_file() else []
    if others:
        more = " and more" if len(others) > 1 else ""
        raise TinygenError(f"-o {request.output} holds {others[0]}{more} and no teacher cache; "
                           f"choose a new or empty folder")
    check_parents(request.output)
    window = model_window(config)
    if request.block_size > window:
        raise TinygenError(f"--block-size {request.block_size} is larger than the teacher's "
                           f"window ({window})")
    vocab = getattr(config, "vocab_size", None)
    if isinstance(vocab, int) and request.top_k > vocab:
        raise TinygenError(f"--top-k {request.top_k} is more than the teacher's vocabulary "
                           f"({vocab} tokens); use --top-k {vocab} or less")
    encoder = teacher_encoder(request.teacher, request.corpora, request.output)
    if request.student is not None:  # its training would refuse the cache, after the scoring
        refuse_other_tokenizer(f"--teacher {request.teacher}", encoder.describe(),
                               build_encoder(request.student)[0])
    dataset = load_corpus(request.corpora, encoder, request.field, request.progress,
                          request.errors)
    model = load_teacher(request.teacher)
    bar = _progress_bar(request.progress)
    try:
        return build_teacher_cache(
            request.output, dataset, encoder, teacher_fingerprint(request.teacher),
            torch_scorer(model, request.top_k), request.block_size, request.top_k, request.seed,
            request.num_blocks, batch_size=request.batch_size, max_minutes=request.max_minutes,
            progress=bar, resizable=request.resizable)
    finally:  # on Ctrl-C too: closed at exit instead, it redrew itself after 'interrupted'
        if bar is not None:
            bar.close()


class _Bar:
    """build_teacher_cache's progress: its first call gives the blocks already done, where a
    resumed bar starts, so its rate and time left count only this run's blocks."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from ..bars import progress_bar

            self.bar = progress_bar(total, "teacher", "block", initial=done)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress_bar(enabled: bool) -> _Bar | None:
    return _Bar() if enabled else None
