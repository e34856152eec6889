"""`tinygen-train teacher-cache`: score a corpus with a teacher once, for logit distillation."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..data.sources import ERRORS

HELP = ("Precompute a teacher's top-k next-token logits over a corpus (resumable), for "
        "'tinygen-train distill --teacher-cache'.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="+", type=Path,
                        help="text files, folders, CSV/JSONL files or token caches")
    parser.add_argument("--teacher", type=Path, required=True,
                        help="the teacher: a transformers causal-LM folder")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="cache folder (an interrupted cache there is continued)")
    add_cache_options(parser)
    parser.add_argument("--field", help="CSV column / JSONL key holding the text (default: 'text')")
    parser.add_argument("--errors", choices=ERRORS, default="strict",
                        help="what to do with bytes that are not UTF-8")
    parser.add_argument("--batch-size", type=int, default=4, help="blocks per teacher forward")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after about this long, at the end of a shard (64 blocks); "
                             "run the same command again to go on")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_cache_options(parser: argparse.ArgumentParser) -> None:
    """What fixes a cache's content; `distill` takes the same options when it builds one."""
    parser.add_argument("--block-size", type=int, default=256, help="tokens per block")
    parser.add_argument("--top-k", type=int, default=32, help="teacher logits kept per position")
    parser.add_argument("--teacher-blocks", type=int,
                        help="blocks to score, a seeded random sample (default: the whole corpus)")
    parser.add_argument("--seed", type=int, default=42, help="chooses and orders the blocks")


def request_from_args(args: argparse.Namespace, output: Path, max_minutes: float | None = None,
                      batch_size: int = 4):
    from tinygen.errors import TinygenError

    from ..distill import CacheRequest
    from .corpus_args import refuse_field_without_records

    # A block of one token holds no next token to learn: no student could train on the cache.
    # (numpy's generator, which draws the blocks, takes no negative seed.)
    for name, least in (("block_size", 2), ("top_k", 1), ("teacher_blocks", 1), ("seed", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise TinygenError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    refuse_field_without_records(args.corpus, args.field)
    if batch_size < 1:
        raise TinygenError(f"--batch-size must be >= 1, got {batch_size}")
    if max_minutes is not None and not max_minutes > 0:  # 0 would stop before the first shard
        raise TinygenError(f"--max-minutes must be > 0, got {max_minutes:g}")
    return CacheRequest(teacher=args.teacher, corpora=tuple(args.corpus), output=output,
                        block_size=args.block_size, top_k=args.top_k,
                        num_blocks=args.teacher_blocks, seed=args.seed,
                        batch_size=batch_size, max_minutes=max_minutes,
                        field=args.field, errors=args.errors, progress=not args.quiet)


def run(args: argparse.Namespace) -> int:
    from ..distill import cache_teacher
    from .corpus_args import refuse_overwriting_inputs

    refuse_overwriting_inputs(args.corpus, [args.output])  # its shards, read as corpus by a rerun
    cache = cache_teacher(request_from_args(args, args.output, args.max_minutes, args.batch_size))
    done = cache.shards_done()
    if done < cache.num_shards:
        print(f"stopped at {done}/{cache.num_shards} shards; run the same command to continue",
              file=sys.stderr)
        return 0
    print(f"teacher cache {cache.folder}: {cache.num_blocks} blocks x {cache.block_size} tokens, "
          f"top {cache.top_k}", file=sys.stderr)
    return 0
