"""`tinygen-train train`: finetune a transformers model, or train one from a preset.

Every flag maps to one TrainConfig field (training/config.py documents each).
A cross-training schedule comes from a JSON file (--phases), a list like:

    [{"data": ["books/", {"path": "news.jsonl", "weight": 2, "field": "body"}],
      "steps": 2000, "learning_rate": 6e-4},
     {"data": ["chat.txt"], "steps": 500, "learning_rate": 1e-4}]

Relative paths in it are relative to the JSON file.

Under torchrun the same command trains data parallel, one process per GPU:
`torchrun --nproc_per_node 8 -m tinygen_trainer.cli train ...` (training/distributed.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from tinygen.errors import TinygenError, respell

from ..data.sources import ERRORS
from ..training.config import DEVICES, PRECISIONS, SCHEDULES, DataSource, Phase, TrainConfig
from ..training.presets import PRESETS
from .corpus_args import refuse_field_without_records, refuse_overwriting_inputs

HELP = "Finetune a transformers causal LM (--model) or train one from scratch (--preset)."
# Defaults shown in --help come from the config itself, so the two never disagree.
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


def _default(name: str) -> Any:
    return _DEFAULTS[name]


# The config's errors name its fields as Python does (learning_rate must be > 0); on the
# command line they name the flag the user typed (--lr). Distillation's own are here too.
FLAGS = {
    "output_dir": "--output", "eos_token": "--eos-token", "block_size": "--block-size",
    "errors": "--errors", "recency": "--recency", "steps": "--steps",
    "batch_size": "--batch-size", "grad_accum": "--grad-accum", "learning_rate": "--lr",
    "weight_decay": "--weight-decay", "warmup_steps": "--warmup-steps",
    "lr_schedule": "--schedule", "min_lr_ratio": "--min-lr-ratio", "grad_clip": "--grad-clip",
    "device": "--device", "precision": "--precision", "seed": "--seed",
    "checkpoint_every": "--checkpoint-every", "keep_checkpoints": "--keep-checkpoints",
    "log_every": "--log-every", "sample_every": "--sample-every",
    "sample_length": "--sample-length", "tensorboard_dir": "--tensorboard",
    "eval_fraction": "--eval-fraction", "eval_every": "--eval-every",
    "eval_batches": "--eval-batches", "kd_weight": "--kd-weight", "temperature": "--temperature",
}


@contextmanager
def named_as_flags():
    """A config's error, with the options it names spelled as flags (FLAGS)."""
    try:
        yield
    except TinygenError as exc:
        raise TinygenError(respell(str(exc), FLAGS)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="*", type=Path,
                        help="text files, folders, CSV/JSONL files or token caches")
    what = parser.add_argument_group("model")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="finetune this transformers model folder")
    source.add_argument("--preset", choices=list(PRESETS),
                        help="train from scratch: " + "; ".join(f"{p.name}: {p.description}"
                                                               for p in PRESETS.values()))
    what.add_argument("--tokenizer", type=Path,
                      help="tokenizer.json (default with --model: the model's own)")
    what.add_argument("--replacements", type=Path,
                      help="replacements.json (default: the one beside the tokenizer or in "
                           "the model)")
    what.add_argument("--eos-token",
                      help="token between documents (default: the model's, else <|endoftext|>)")
    what.add_argument("-o", "--output", type=Path, required=True, help="output folder")

    data = parser.add_argument_group("data")
    data.add_argument("--weights", type=float, nargs="+", metavar="W",
                      help="blend ratio of each corpus, in order (default: equal)")
    data.add_argument("--loss-weights", type=float, nargs="+", metavar="W",
                      help="per-token loss weight of each corpus, in order (default: all 1)")
    data.add_argument("--phases", type=Path, metavar="JSON",
                      help='cross-training schedule (instead of corpus arguments and --steps): a JSON '
                           'list of phases, each {"data": [CORPUS, ...], "steps": N, "learning_rate": LR}; '
                           'a corpus is a path or {"path", "weight", "loss_weight", "field"}, '
                           'relative to the file')
    data.add_argument("--field", help="CSV column / JSONL key holding the text (default: 'text')")
    data.add_argument("--errors", choices=ERRORS, default=_default("errors"),
                      help="what to do with bytes that are not UTF-8")
    data.add_argument("--line-by-line", action="store_true",
                      help="one record per row, padded, instead of random windows over the stream")
    data.add_argument("--block-size", type=int,
                      help="tokens per row (default: the model's window, at most 1024)")
    data.add_argument("--recency", type=float, default=_default("recency"),
                      help="weight of the corpus's last token relative to its first (1 = uniform)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int,
                     help="optimizer steps (default: 1000, or the phases' sum)")
    opt.add_argument("--batch-size", type=int, default=_default("batch_size"),
                     help="rows per micro-batch, over all devices and hosts (split among them)")
    opt.add_argument("--grad-accum", type=int, default=_default("grad_accum"),
                     help="micro-batches per optimizer step")
    opt.add_argument("--lr", type=float,
                     help="peak learning rate (default: the preset's, or 5e-5 finetuning)")
    opt.add_argument("--weight-decay", type=float, default=_default("weight_decay"),
                     help="AdamW weight decay (not on biases and norms)")
    opt.add_argument("--warmup-steps", type=int, default=_default("warmup_steps"),
                     help="linear warmup at the start of each phase (default: a tenth of the "
                          "phase, at most 100)")
    opt.add_argument("--schedule", choices=SCHEDULES, default=_default("lr_schedule"),
                     help="learning-rate decay after warmup")
    opt.add_argument("--min-lr-ratio", type=float, default=_default("min_lr_ratio"),
                     help="final learning rate as a fraction of the peak")
    opt.add_argument("--grad-clip", type=float, default=_default("grad_clip"), help="0 disables")

    rt = parser.add_argument_group("runtime")
    rt.add_argument("--device", choices=DEVICES, default=_default("device"),
                    help="auto: cuda, then xla (with PJRT_DEVICE set), then cpu")
    rt.add_argument("--precision", choices=PRECISIONS, default=_default("precision"),
                    help="auto: bf16 (fp16 on older GPUs) on GPUs and TPUs, fp32 on the CPU")
    rt.add_argument("--seed", type=int, default=_default("seed"),
                    help="seeds python, numpy, torch, the init and the data order")

    ck = parser.add_argument_group("checkpoints and logging")
    ck.add_argument("--checkpoint-every", type=int, default=_default("checkpoint_every"),
                    help="0 disables")
    ck.add_argument("--keep-checkpoints", type=int, default=_default("keep_checkpoints"),
                    help="how many of the newest checkpoints to keep")
    ck.add_argument("--resume", action="store_true",
                    help="continue from the newest checkpoint in --output")
    ck.add_argument("--log-every", type=int, default=_default("log_every"),
                    help="write metrics.jsonl (and TensorBoard) every N steps")
    ck.add_argument("--sample-every", type=int, default=_default("sample_every"),
                    help="print a generated sample (and log it to --tensorboard) every N "
                         "steps; 0 disables")
    ck.add_argument("--sample-prompt", default=_default("sample_prompt"),
                    help="text the samples continue; empty: a new document")
    ck.add_argument("--sample-length", type=int, default=_default("sample_length"),
                    help="tokens per sample")
    ck.add_argument("--tensorboard", type=Path, metavar="DIR", help="also log to TensorBoard here")
    ck.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = parser.add_argument_group("held-out evaluation (loss and perplexity on text not "
                                   "trained on)")
    held = ev.add_mutually_exclusive_group()
    held.add_argument("--eval-data", type=Path, metavar="PATH",
                      help="held-out text: a file, folder, CSV/JSONL file or token cache, read "
                           "like the corpora (--field, --line-by-line)")
    held.add_argument("--eval-fraction", type=float, metavar="F",
                      help="hold out this share of the corpora's documents (e.g. 0.05), the "
                           "same ones whatever --seed; a text file is one document")
    ev.add_argument("--eval-every", type=int, default=_default("eval_every"), metavar="N",
                    help="evaluate every N steps; always at the end (0: at the end only)")
    ev.add_argument("--eval-batches", type=int, metavar="N",
                    help="at most N batches of --batch-size rows an evaluation, spread over "
                         "the held-out rows (default: all of them)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    data: tuple[DataSource, ...] = ()
    phases: tuple[Phase, ...] = ()
    if args.phases is not None:
        if args.corpus:
            raise TinygenError("give corpora either as arguments or in --phases, not both")
        for flag, values, key in (("--weights", args.weights, "weight"),
                                  ("--loss-weights", args.loss_weights, "loss_weight")):
            if values is not None:  # one value per corpus argument, and there are none: ignored
                raise TinygenError(f"{flag} is for corpus arguments; with --phases give each "
                                   f"corpus its \"{key}\" in {args.phases}, and drop {flag}")
        phases = load_phases(args.phases, args.field)
    else:
        data = _sources(args)
    # Checkpoints (or TensorBoard's event files) written into a corpus folder join the corpus:
    # the resume then refuses it.
    corpora = [source.path for source in data] + [s.path for p in phases for s in p.data]
    if args.eval_data is not None:
        corpora.append(args.eval_data)
    outputs = [args.output] + ([args.tensorboard] if args.tensorboard is not None else [])
    with named_as_flags():
        config = TrainConfig(
            output_dir=args.output, data=data, phases=phases, model=args.model, preset=args.preset,
            tokenizer=args.tokenizer, replacements=args.replacements, eos_token=args.eos_token,
            block_size=args.block_size, line_by_line=args.line_by_line, errors=args.errors,
            recency=args.recency, steps=args.steps, batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            learning_rate=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps,
            lr_schedule=args.schedule, min_lr_ratio=args.min_lr_ratio, grad_clip=args.grad_clip,
            device=args.device, precision=args.precision, seed=args.seed,
            checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
            resume=args.resume,
            log_every=args.log_every, sample_every=args.sample_every,
            sample_prompt=args.sample_prompt, sample_length=args.sample_length,
            tensorboard_dir=args.tensorboard, progress=not args.quiet,
            eval_data=None if args.eval_data is None else DataSource(args.eval_data,
                                                                     field=args.field),
            eval_fraction=args.eval_fraction, eval_every=args.eval_every,
            eval_batches=args.eval_batches,
        )
    # After the config's checks: --eval-data in --output is its error, in words of its own.
    refuse_overwriting_inputs([c for c in corpora if Path(c).is_dir()], outputs)
    return config


def _sources(args: argparse.Namespace) -> tuple[DataSource, ...]:
    n = len(args.corpus)
    for flag, values in (("--weights", args.weights), ("--loss-weights", args.loss_weights)):
        if values is not None and len(values) != n:
            raise TinygenError(f"{flag} needs one value per corpus ({n}), got {len(values)}")
    weights = args.weights or [1.0] * n
    loss_weights = args.loss_weights or [1.0] * n
    return tuple(DataSource(p, weight=w, loss_weight=lw, field=args.field)
                 for p, w, lw in zip(args.corpus, weights, loss_weights, strict=True))


def load_phases(path: Path, default_field: str | None = None) -> tuple[Phase, ...]:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinygenError(f"phases file not found: {path}") from None
    except IsADirectoryError:
        raise TinygenError(f"--phases {path} is a folder; give the phases JSON file") from None
    except OSError as exc:
        raise TinygenError(f"cannot read the phases file {path} ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TinygenError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(spec, list) or not spec:
        raise TinygenError(f"{path}: expected a non-empty JSON list of phases")
    phases = []
    for i, item in enumerate(spec):
        where = f"{path}: phase {i + 1}"
        if not isinstance(item, dict) or set(item) - {"data", "steps", "learning_rate"}:
            raise TinygenError(f"{where}: expected an object with data, steps, learning_rate")
        data = item.get("data") or []
        if not isinstance(data, list):  # a bare string would be read as one corpus per character
            raise TinygenError(f"{where}: data must be a list of corpora")
        sources = []
        for entry in data:
            entry = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or \
                    set(entry) - {"path", "weight", "loss_weight", "field"}:
                raise TinygenError(f"{where}: each data entry is a path or "
                                   f"{{path, weight, loss_weight, field}}")
            try:
                sources.append(DataSource(path.parent / entry["path"],
                                          weight=entry.get("weight", 1.0),
                                          loss_weight=entry.get("loss_weight", 1.0),
                                          field=entry.get("field", default_field)))
            except TinygenError as exc:
                raise TinygenError(f"{where}: {exc}") from None
        if item.get("steps") is None:
            raise TinygenError(f"{where}: no \"steps\"; give each phase its steps "
                               f"(an integer >= 1)")
        try:
            phases.append(Phase(tuple(sources), item.get("steps"), item.get("learning_rate")))
        except TinygenError as exc:  # Phase's own message says what, not which file or phase
            raise TinygenError(f"{where}: {exc}") from None
    return tuple(phases)


def run(args: argparse.Namespace) -> int:
    from ..training import train  # torch and transformers load only when training runs
    from ..training.distributed import process_rank

    config = config_from_args(args)
    refuse_field_without_records([s.path for p in config.resolved_phases() for s in p.data],
                                 args.field)
    try:
        out = train(config)
    except KeyboardInterrupt:
        return interrupted(config)
    if process_rank() == 0:  # under torchrun: once, not once per process
        print(f"saved the model to {out}{held_out_figures(out)}; next: tinygen-train export "
              f"{out} OUT", file=sys.stderr)
    return 0


def interrupted(config: TrainConfig) -> int:
    """Ctrl-C in a run: one line saying what it kept and how to go on; exit status 130."""
    from ..training.checkpoint import latest_checkpoint
    from ..training.distributed import process_rank

    if process_rank() == 0:  # Ctrl-C reaches every process: one says so
        kept = latest_checkpoint(config.output_dir)
        if kept is not None:
            step = int(kept.name.removeprefix("step-"))
            what = (f"the checkpoint of step {step} is kept ({kept}): run the same command "
                    f"with --resume to go on from there")
        elif config.checkpoint_every:
            what = (f"it stopped before its first checkpoint (--checkpoint-every "
                    f"{config.checkpoint_every}), so there is nothing to resume: the same "
                    f"command starts it again")
        else:
            what = ("--checkpoint-every 0 keeps no checkpoint to resume from: the same command "
                    "starts it again")
        sys.stderr.write(f"tinygen-train: interrupted; {what}\n")  # one write: whole lines
    return 130


def held_out_figures(out: Path) -> str:
    """", held-out perplexity 12.34 (loss 2.5130)" from the saved model's eval_results.json."""
    from ..training.evaluation import read_result

    record = read_result(out)
    if record is None or not isinstance(record.get("eval_loss"), (int, float)):
        return ""
    perplexity = record.get("eval_perplexity")
    shown = f"{perplexity:.2f}" if isinstance(perplexity, (int, float)) else "inf"
    return f" (held-out perplexity {shown}, loss {record['eval_loss']:.4f})"
