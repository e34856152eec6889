"""`tinygen-train distill`: train a student from a teacher, by its logits or by its texts.

    # logits (one tokenizer): score the corpus once, then train on the cache
    tinygen-train teacher-cache corpus.txt --teacher TEACHER -o cache/
    tinygen-train distill --teacher-cache cache/ --preset cpu-llama --tokenizer TEACHER/tokenizer.json -o student/
    # or both in one go (the cache goes to student/teacher-cache)
    tinygen-train distill corpus.txt --teacher TEACHER --preset ... -o student/
    # sequences (any tokenizer): the exported teacher writes N texts, the student trains on them
    tinygen-train distill [corpus.txt] --teacher EXPORTED_TEACHER --teacher-texts 2000 --preset ... -o student/

Every `train` option applies (steps, batch size, checkpoints, --resume, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import fields
from pathlib import Path

from tinygen.errors import TinygenError

from . import teacher_cache as cache_command
from . import train as train_command
from .corpus_args import refuse_field_without_records

HELP = "Distill a teacher into a student: logit distillation from a teacher cache, or sequence-level."

# Each kind's own options, with their defaults: the other kind would ignore them, so it refuses
# any that is set.
LOGIT_OPTIONS = {"teacher_cache": None, "kd_weight": 0.9, "temperature": 1.0,
                 "teacher_embeddings": None, "top_k": 32, "teacher_blocks": None}
TEXT_OPTIONS = {"prompts": None, "text_tokens": 256}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train_command.add_arguments(parser)
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", type=Path,
                       help="transformers folder (logits; scored into OUTPUT/teacher-cache), or an "
                            "exported tinygen model (with --teacher-texts)")
    group.add_argument("--teacher-cache", type=Path,
                       help="teacher cache from 'tinygen-train teacher-cache' (logits)")
    group.add_argument("--kd-weight", type=float,
                       default=LOGIT_OPTIONS["kd_weight"],
                       help="share of the loss from the teacher's logits; the rest is cross-entropy")
    group.add_argument("--temperature", type=float,
                       default=LOGIT_OPTIONS["temperature"],
                       help="softens teacher and student before the KL (scaled by T^2)")
    group.add_argument("--teacher-embeddings", type=Path, metavar="DIR",
                       help="start the student's token embeddings from this transformers "
                            "teacher's, projected to the student's width (same tokenizer)")
    group.add_argument("--top-k", type=int,
                       default=LOGIT_OPTIONS["top_k"],
                       help="teacher logits kept per position, when the cache is built here")
    group.add_argument("--teacher-blocks", type=int,
                       help="blocks the teacher scores, when the cache is built here "
                            "(default: all)")
    group.add_argument("--teacher-texts", type=int, metavar="N",
                       help="sequence-level: the teacher writes N texts to OUTPUT/teacher-texts.jsonl")
    group.add_argument("--prompts", type=Path,
                       help="sequence-level: a text file of prompts, one per line, taken in "
                            "turn per text")
    group.add_argument("--text-tokens", type=int,
                       default=TEXT_OPTIONS["text_tokens"],
                       help="sequence-level: new tokens per teacher text")


def run(args: argparse.Namespace) -> int:
    sequences = args.teacher_texts is not None
    for name, default in (LOGIT_OPTIONS if sequences else TEXT_OPTIONS).items():
        if getattr(args, name) != default:
            flag = "--" + name.replace("_", "-")
            raise TinygenError(
                f"{flag} is for logit distillation, not for --teacher-texts (the teacher's "
                f"texts); drop it" if sequences else
                f"{flag} is for sequence-level distillation (--teacher-texts N); drop it, or "
                f"give --teacher-texts")
    if args.teacher_cache is not None and args.field is not None:
        raise TinygenError("--field picks the text of a corpus, and with --teacher-cache the data "
                           "is the cache: drop --field (give it to 'tinygen-train teacher-cache')")
    if sequences:
        return _sequences(args)
    return _logits(args)


def _logits(args: argparse.Namespace) -> int:
    from ..distill import DistillConfig, cache_teacher, distill
    from ..training.checkpoint import latest_checkpoint
    from ..training.config import TrainConfig
    from ..training.distributed import before_training_once

    # The rows are the cache's blocks, one source: a blend or its weights would be ignored.
    for flag, values in (("--weights", args.weights), ("--loss-weights", args.loss_weights)):
        if values is not None:
            raise TinygenError(f"logit distillation trains on the teacher cache's blocks, all "
                               f"weighted alike; drop {flag}")
    cache, request = args.teacher_cache, None
    if cache is None:
        if args.teacher is None or not args.corpus:
            raise TinygenError("give --teacher-cache DIR, or --teacher DIR and a corpus to score")
        cache = args.output / "teacher-cache"
        args.block_size = args.block_size or 256
        request = cache_command.request_from_args(args, cache)
    elif args.corpus:
        raise TinygenError("with --teacher-cache the data is the cache; drop the corpus arguments")
    else:  # the cache is built already: these would be ignored, silently
        for flag, set_ in (("--teacher", args.teacher is not None),
                           ("--top-k", args.top_k != LOGIT_OPTIONS["top_k"]),
                           ("--teacher-blocks", args.teacher_blocks is not None)):
            if set_:
                raise TinygenError(f"--teacher-cache {cache} is built already, so {flag} (for a "
                                   f"cache built here) would be ignored; drop {flag}")
    args.corpus = [cache]
    # Every option is checked before the teacher runs: scoring a corpus takes hours on a CPU.
    base = train_command.config_from_args(args)
    with train_command.named_as_flags():
        config = DistillConfig(**{f.name: getattr(base, f.name) for f in fields(TrainConfig)},
                               teacher_cache=cache, kd_weight=args.kd_weight,
                               temperature=args.temperature,
                               teacher_embeddings=args.teacher_embeddings)
    if request is not None:
        # A run with checkpoints trained on the cache as it is: scoring more (or fewer) blocks,
        # or any run but its resume, would change its rows after hours of scoring.
        trained = latest_checkpoint(args.output) is not None
        if trained and not config.resume:
            raise TinygenError(f"{args.output} already has checkpoints; pass --resume to continue "
                               f"that run, or choose another --output")
        request = dataclasses.replace(request, resizable=not trained, student=config)

        def score() -> None:
            if not cache_teacher(request).complete:
                raise TinygenError(f"{cache} is incomplete; run the command again to finish it")

        before_training_once("scoring the corpus with the teacher", score)
    try:  # the scoring above goes on where it stopped by itself; training needs --resume
        return _saved(distill(config))
    except KeyboardInterrupt:
        return train_command.interrupted(config)


def _sequences(args: argparse.Namespace) -> int:
    from ..distill import TextsRequest, teacher_texts
    from ..distill.sequences import check_written_texts
    from ..training import train
    from ..training.distributed import before_training_once

    if args.teacher is None:
        raise TinygenError("--teacher-texts needs --teacher EXPORTED_MODEL to write them")
    if args.teacher_cache is not None:
        raise TinygenError("--teacher-texts (sequences) and --teacher-cache (logits) exclude each other")
    prompts = ("",)
    if args.prompts is not None:
        try:
            lines = args.prompts.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise TinygenError(f"cannot read --prompts {args.prompts}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise TinygenError(f"--prompts {args.prompts}: not UTF-8 at byte {exc.start}; give a "
                               f"text file of prompts, one per line, in UTF-8") from None
        prompts = tuple(line for line in lines if line.strip())
        if not prompts:
            raise TinygenError(f"--prompts {args.prompts} has no prompts (every line is empty); "
                               f"give one prompt per line, or drop --prompts for unprompted texts")
    # Before the teacher's texts (JSONL) join the corpora: they would hide a --field on text.
    refuse_field_without_records(args.corpus, args.field)
    n = len(args.corpus)
    for flag, values in (("--weights", args.weights), ("--loss-weights", args.loss_weights)):
        if values is not None and len(values) != n:  # counted before the texts join, at weight 1
            raise TinygenError(f"{flag} needs one value per corpus ({n}), got {len(values)}; "
                               f"the teacher's texts get 1")
    request = TextsRequest(args.teacher, args.output / "teacher-texts.jsonl", args.teacher_texts,
                           prompts, args.text_tokens, args.seed)
    args.corpus = [*args.corpus, request.output]
    args.weights = args.weights and [*args.weights, 1.0]
    args.loss_weights = args.loss_weights and [*args.loss_weights, 1.0]
    # Checked before the teacher writes a text; the texts file need not exist yet.
    config = train_command.config_from_args(args)
    check_written_texts(request, config.resume)
    before_training_once("writing the teacher's texts",
                         lambda: teacher_texts(request, progress=not args.quiet))
    try:
        return _saved(train(config))
    except KeyboardInterrupt:
        return train_command.interrupted(config)


def _saved(out: Path) -> int:
    from ..training.distributed import process_rank

    if process_rank() == 0:  # under torchrun: once, not once per process
        print(f"saved the student to {out}{train_command.held_out_figures(out)}; next: "
              f"tinygen-train export {out} OUT", file=sys.stderr)
    return 0
