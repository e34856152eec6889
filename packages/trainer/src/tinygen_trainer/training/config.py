"""TrainConfig: every training option, documented once, validated once.

Build it directly or through the CLI; change it with `dataclasses.replace`, which
validates again. Paths may be given as str and are stored as Path.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError

from ..data.sources import ERRORS, corpus_files
from .presets import PRESETS

SCHEDULES = ("cosine", "linear", "constant")
DEVICES = ("auto", "cpu", "cuda", "xla")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_STEPS = 1000
FINETUNE_LR = 5e-5  # learning rate when finetuning and none is given
MAX_DEFAULT_BLOCK = 1024  # default block_size: the model's window, capped here


@dataclass(frozen=True)
class DataSource:
    # A text file, a folder, a CSV/JSONL file, or a token cache from `tinygen-train encode`.
    path: Path
    # Share of training rows drawn from this corpus when several are blended.
    weight: float = 1.0
    # Multiplies the loss of every token from this corpus (e.g. 0.5 for noisy text).
    loss_weight: float = 1.0
    # CSV column / JSONL key holding the text; None means "text".
    field: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        for name in ("weight", "loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or not value > 0:
                raise TinygenError(f"{self.path}: {name} must be > 0, got {value!r}")
        if self.field is not None and not (isinstance(self.field, str) and self.field.strip()):
            raise TinygenError(f"{self.path}: field must be a column or key name (several: "
                               f"\"title,body\"), got {self.field!r}")

    @classmethod
    def of(cls, value: "DataSource | str | Path") -> "DataSource":
        return value if isinstance(value, DataSource) else cls(Path(value))


@dataclass(frozen=True)
class Phase:
    """One stage of a cross-training schedule: its own corpora, steps and peak learning rate."""

    data: tuple[DataSource, ...]
    steps: int
    # Peak learning rate of this phase; None uses TrainConfig.learning_rate.
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", tuple(DataSource.of(d) for d in _as_tuple(self.data)))
        if not self.data:
            raise TinygenError("every phase needs at least one corpus")
        if not _is_int(self.steps) or self.steps < 1:
            raise TinygenError(f"phase steps must be an integer >= 1, got {self.steps!r}")
        lr = self.learning_rate
        if lr is not None and not (_is_number(lr) and lr > 0):
            raise TinygenError(f"phase learning_rate must be > 0, got {lr!r}")


@dataclass(frozen=True)
class TrainConfig:
    # Where the trained model, metrics.jsonl and checkpoints/ go.
    output_dir: Path
    # Corpora, blended by their weights. Leave empty when `phases` is given.
    data: tuple[DataSource, ...] = ()
    # Finetune this transformers causal-LM directory ...
    model: Path | None = None
    # ... or train from scratch from this preset (see presets.py); exactly one of the two.
    preset: str | None = None
    # tokenizer.json; required with a preset, defaults to the model's own when finetuning.
    tokenizer: Path | None = None
    # replacements.json; defaults to the one beside the tokenizer or in the model, if any.
    replacements: Path | None = None
    # End-of-text token between documents; default: the model's, else <|endoftext|>, </s>, ...
    eos_token: str | None = None

    # -- data ----------------------------------------------------------------
    # Tokens per training row; default: the model's context window, at most 1024.
    block_size: int | None = None
    # One record (line / CSV row / JSONL record) per row, padded, instead of random windows.
    line_by_line: bool = False
    # "strict" stops at bytes that are not UTF-8; "replace" puts U+FFFD in their place.
    errors: str = "strict"
    # > 1 weights later text more: the corpus's last token counts `recency` times its first.
    recency: float = 1.0
    # Cross-training schedule: phase 1 on A, then phase 2 on B, ... Replaces data/steps.
    phases: tuple[Phase, ...] = ()

    # -- optimisation --------------------------------------------------------
    # Optimizer steps; default 1000. With phases, their sum (leave this None).
    steps: int | None = None
    # Rows per micro-batch, global: split over every device and host (XLA data parallel);
    # one step sees batch_size * grad_accum rows.
    batch_size: int = 8
    grad_accum: int = 1
    # Peak learning rate; default: the preset's, or 5e-5 when finetuning.
    learning_rate: float | None = None
    weight_decay: float = 0.1
    adam_betas: tuple[float, float] = (0.9, 0.95)
    # Linear warmup from 0 to the peak, at the start of each phase; default: a tenth of the
    # phase, at most 100 steps (a fixed 100 left short runs all warmup, never decaying).
    warmup_steps: int | None = None
    # Decay after warmup: cosine or linear down to min_lr_ratio * peak, or constant.
    lr_schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    # Clip the gradient's global norm to this; 0 disables.
    grad_clip: float = 1.0

    # -- runtime -------------------------------------------------------------
    # auto picks cuda, then xla (torch_xla installed and PJRT_DEVICE set), then cpu.
    device: str = "auto"
    # auto: bf16 autocast where the device supports it, fp16 on older GPUs, fp32 on CPU.
    precision: str = "auto"
    # Seeds python, numpy and torch, model init and the data order.
    seed: int = 42

    # -- checkpoints ---------------------------------------------------------
    # Save a resumable checkpoint every N steps; 0 disables.
    checkpoint_every: int = 500
    # Keep the newest K checkpoints.
    keep_checkpoints: int = 3
    # Continue from the newest checkpoint in output_dir/checkpoints, if there is one.
    resume: bool = False

    # -- reporting -----------------------------------------------------------
    # Write loss, lr and tokens/s to metrics.jsonl (and TensorBoard) every N steps.
    log_every: int = 10
    # Print a generated sample every N steps (TensorBoard gets it too); 0 disables.
    sample_every: int = 0
    sample_prompt: str = ""
    sample_length: int = 64
    # Also log to TensorBoard in this folder (needs the tensorboard package).
    tensorboard_dir: Path | None = None
    # Progress bars on stderr.
    progress: bool = True

    # -- held-out evaluation (training/evaluation.py) ------------------------
    # Held-out text (any corpus `data` takes), scored and never trained on ...
    eval_data: DataSource | None = None
    # ... or hold out this share (0 < F < 1) of the training corpora's documents: a fixed
    # draw per corpus, the same whatever the seed. A text file is one document.
    eval_fraction: float | None = None
    # Evaluate every N steps; with held-out text there is always one at the end. 0: the end only.
    eval_every: int = 0
    # At most N batches of batch_size rows an evaluation, spread over the held-out rows;
    # None: every row.
    eval_batches: int | None = None

    def __post_init__(self) -> None:
        for name in ("output_dir", "model", "tokenizer", "replacements", "tensorboard_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "data", tuple(DataSource.of(d) for d in _as_tuple(self.data)))
        object.__setattr__(self, "phases", _as_tuple(self.phases))
        if self.eval_data is not None:
            object.__setattr__(self, "eval_data", DataSource.of(self.eval_data))
        object.__setattr__(self, "adam_betas", tuple(self.adam_betas))
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, rule: str) -> TinygenError:
            return TinygenError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        if (self.model is None) == (self.preset is None):
            raise TinygenError(
                "give exactly one of --model DIR (finetune) or --preset NAME (from scratch)")
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise TinygenError(f"unknown preset '{self.preset}' (known: {', '.join(PRESETS)})")
            if self.tokenizer is None:
                raise TinygenError("a preset needs --tokenizer tokenizer.json "
                                   "(train one with 'tinygen-train tokenizer')")
        if self.phases:
            if self.data:
                raise TinygenError(
                    "give either data or phases, not both: each phase names its own corpora")
            if self.steps is not None:
                raise TinygenError("with phases, the steps come from each phase; leave steps unset")
            if not all(isinstance(p, Phase) for p in self.phases):
                raise TinygenError("phases must be Phase objects")
        elif not self.data:
            raise TinygenError("no training data: give at least one corpus")
        if self.steps is not None and (not _is_int(self.steps) or self.steps < 1):
            raise bad("steps", "an integer >= 1")
        if self.block_size is not None and (not _is_int(self.block_size) or self.block_size < 2):
            raise bad("block_size", "an integer >= 2")
        for name in ("batch_size", "grad_accum", "keep_checkpoints", "log_every", "sample_length"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        for name in ("warmup_steps", "checkpoint_every", "sample_every", "seed"):
            if name == "warmup_steps" and self.warmup_steps is None:
                continue
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if self.seed >= 2**32:  # numpy's and torch's generators are seeded from 32 bits
            raise bad("seed", "below 2**32 (4294967296)")
        lr = self.learning_rate
        if lr is not None and not (_is_number(lr) and lr > 0):
            raise bad("learning_rate", "> 0")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", ">= 0")
        betas = self.adam_betas
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise bad("adam_betas", "two numbers in [0, 1)")
        if not _is_number(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "in [0, 1]")
        if not _is_number(self.grad_clip) or self.grad_clip < 0:
            raise bad("grad_clip", ">= 0")
        if not _is_number(self.recency) or self.recency <= 0:
            raise bad("recency", "> 0")
        if self.recency != 1.0 and self.line_by_line:
            raise TinygenError(
                "recency weighting needs a token stream; it does not apply to --line-by-line")
        self._validate_eval()
        for name, allowed in (("lr_schedule", SCHEDULES), ("device", DEVICES),
                              ("precision", PRECISIONS), ("errors", ERRORS)):
            if getattr(self, name) not in allowed:
                raise bad(name, f"one of {', '.join(allowed)}")

    def _validate_eval(self) -> None:
        fraction = self.eval_fraction
        if fraction is not None and not (_is_number(fraction) and 0 < fraction < 1):
            raise TinygenError(f"eval_fraction must be between 0 and 1 (a share of the "
                               f"documents, e.g. 0.1), got {fraction!r}")
        if self.eval_data is not None and fraction is not None:
            raise TinygenError("give held-out text either as --eval-data or as --eval-fraction, "
                               "not both")
        twice = fraction is not None and _read_twice(
            [(s.path, s.field) for phase in self.resolved_phases() for s in phase.data])
        if twice:
            file, first, other = twice
            raise TinygenError(f"--eval-fraction holds documents out of each corpus apart, and "
                               f"{first} and {other} both read {file}, so what one holds out "
                               f"the other trains on; give each file once, or give held-out "
                               f"text with --eval-data")
        if not _is_int(self.eval_every) or self.eval_every < 0:
            raise TinygenError(f"eval_every must be an integer >= 0, got {self.eval_every!r}")
        batches = self.eval_batches
        if batches is not None and (not _is_int(batches) or batches < 1):
            raise TinygenError(f"eval_batches must be an integer >= 1, got {batches!r}")
        trained = {Path(p).resolve() for p in self.data_paths()[:-1]} if self.eval_data else ()
        if self.eval_data is not None and self.eval_data.path.resolve() in trained:
            raise TinygenError(f"--eval-data {self.eval_data.path} is also a training corpus, so "
                               f"its text is not held out; give other text, or hold out part of "
                               f"the corpora with --eval-fraction")
        # `--eval-data OUT -o OUT` made OUT, then found no text in it.
        held, out = self.eval_data and self.eval_data.path.resolve(), self.output_dir.resolve()
        if held and held.is_relative_to(out):
            place = "is" if held == out else "is inside"
            raise TinygenError(f"--eval-data {self.eval_data.path} {place} the run's --output "
                               f"folder {self.output_dir}, which holds what the run writes; "
                               f"give held-out text from another folder")
        shared = self.eval_data and _shared_file(self.eval_data.path, self.data_paths()[:-1])
        if shared:
            raise TinygenError(f"--eval-data {self.eval_data.path} and the training corpora both "
                               f"read {shared}, so its text is not held out; give other text, or "
                               f"hold out part of the corpora with --eval-fraction")
        if self.eval_data is None and fraction is None:
            for flag, value in (("--eval-every", self.eval_every or None),
                                ("--eval-batches", batches)):
                if value is not None:
                    raise TinygenError(f"{flag} {value} needs held-out text: give --eval-data "
                                       f"PATH or --eval-fraction F")

    # -- derived -------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        if self.phases:
            return sum(p.steps for p in self.phases)
        return self.steps or DEFAULT_STEPS

    def resolved_phases(self) -> tuple[Phase, ...]:
        """The schedule as phases; a run without phases is one phase over `data`."""
        return self.phases or (Phase(self.data, self.total_steps, self.learning_rate),)

    def to_json(self, absolute_paths: bool = False) -> dict[str, Any]:
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value.resolve() if absolute_paths else value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        return plain(asdict(self))

    # Options that fix which rows (and tokens: errors) come in which order: a resume must
    # not change them. (Not annotated, so not a dataclass field.)
    RESUME_FIXED = ("model", "preset", "tokenizer", "replacements", "eos_token", "data", "phases",
                    "block_size", "line_by_line", "errors", "batch_size", "grad_accum", "seed",
                    "recency", "eval_data", "eval_fraction", "eval_batches")

    def resume_identity(self) -> dict[str, Any]:
        data = self.to_json(absolute_paths=True)  # "corpus.txt" and "/work/corpus.txt" are one file
        return {name: data[name] for name in self.RESUME_FIXED}

    # Options a resume may change on purpose (a lower peak after a loss spike); the run says so,
    # since its losses are then not an uninterrupted run's. (steps may grow: that is continuing.)
    RESUME_NOTED = ("learning_rate", "weight_decay", "adam_betas", "warmup_steps", "lr_schedule",
                    "min_lr_ratio", "grad_clip", "precision")

    def resume_noted(self) -> dict[str, Any]:
        data = self.to_json()
        return {name: data[name] for name in self.RESUME_NOTED}

    def data_paths(self) -> list[Path]:
        """Every corpus the run reads, its phases' and the held-out text included."""
        held_out = [self.eval_data.path] if self.eval_data is not None else []
        return [d.path for d in self.data] + [d.path for phase in self.phases for d in phase.data] \
            + held_out


def _shared_file(held: Path, trained: list[Path]) -> Path | None:
    """A file both the held-out text and a corpus read (`data/` trained on, `data/holdout.txt`
    held out, or the other way round); paths not there yet are the data loader's to report."""
    def files(path: Path) -> set[Path]:
        with contextlib.suppress(TinygenError):
            return {f.resolve() for f in corpus_files(path)}
        return set()

    held_files = files(Path(held))
    return next((f for path in trained for f in sorted(files(Path(path)) & held_files)), None)


def _read_twice(corpora: list[tuple[Path, str | None]]) -> tuple[Path, Path, Path] | None:
    """(a file, the corpus that reads it, another that does) among corpora, each a (path,
    field) as the data loader keys them: `data/` and `data/a.jsonl`, or one file by two paths.
    The loader encodes each apart, so --eval-fraction draws from each apart. Paths not there
    yet are the data loader's to report."""
    readers: dict[tuple[Path, str | None], Path] = {}  # (file, field) -> its first corpus
    for path, field in dict.fromkeys(corpora):
        with contextlib.suppress(TinygenError):
            for file in corpus_files(path):
                first = readers.setdefault((file.resolve(), field), path)
                if first != path:
                    return file, first, path
    return None


def _as_tuple(value: Any) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, Path, DataSource, Phase)):
        return (value,)
    return tuple(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

