"""`tinygen-train tokenizer`: train a byte-level BPE tokenizer on your corpus."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tinygen.atomic import check_parents
from tinygen.errors import TinygenError
from tinygen.fields import FILE_NAME as FIELDS_FILE
from tinygen.fields import FieldSchema
from tinygen.replacements import FILE_NAME as REPLACEMENTS_FILE
from tinygen.replacements import Replacements, regex_problem

from ..tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer
from .corpus_args import (add_corpus_arguments, read_corpus, refuse_field_without_records,
                          refuse_overwriting_inputs)

HELP = "Train a byte-level BPE tokenizer (tokenizer.json) on a corpus."


def _tokenizer_path(text: str) -> Path:
    """-o tok, tok/ or an existing folder means tok/tokenizer.json; a name ending in .json is
    the file itself (replacements.json and fields.json go beside it, in its folder)."""
    path = Path(text)
    if text.endswith(("/", os.sep)) or path.is_dir() or path.suffix.lower() != ".json":
        return path / "tokenizer.json"
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_corpus_arguments(parser)
    parser.add_argument("-o", "--output", type=_tokenizer_path, default=Path("tokenizer.json"),
                        help="where to write tokenizer.json: a folder (FOLDER/tokenizer.json) or a "
                             "FILE.json; replacements.json and fields.json go beside it")
    parser.add_argument("--vocab-size", type=int, default=TokenizerConfig.vocab_size,
                        help="final vocabulary size, bytes and special tokens included")
    parser.add_argument("--min-frequency", type=int, default=TokenizerConfig.min_frequency,
                        help="merge only pairs seen at least this often")
    parser.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                        help="an extra special token (repeatable); <|endoftext|> is always there")
    parser.add_argument("--replace", nargs=2, action="append", default=[],
                        metavar=("TEXT", "TOKEN"),
                        help="replace this literal text by a special token (repeatable)")
    parser.add_argument("--replace-regex", nargs=2, action="append", default=[],
                        metavar=("REGEX", "TOKEN"),
                        help=r"replace matches by a special token: 'https?://\S+' '<|url|>'")
    parser.add_argument("--decode", nargs=2, action="append", default=[], metavar=("TOKEN", "TEXT"),
                        help="text a generated special token stands for, e.g. '<|url|>' '<url>'")
    parser.add_argument("--ban", action="append", default=[], metavar="TOKEN",
                        help="a special token the model must never generate (repeatable)")


def replacements_from_args(args: argparse.Namespace) -> Replacements:
    """The --replace/--replace-regex/--decode/--ban flags as one validated Replacements."""
    # Checked here, not by from_json, whose message names a place in replacements.json.
    for flag, what, pairs in (("--replace", "TEXT", args.replace),
                              ("--replace-regex", "REGEX", args.replace_regex)):
        for text, token in pairs:
            if not text or not token:
                raise TinygenError(f"{flag} {text!r} {token!r}: give a non-empty {what} and TOKEN")
    if "" in [token for token, _ in args.decode] + args.ban:
        flag = "--decode" if "" in dict(args.decode) else "--ban"
        raise TinygenError(f"{flag} '': give a non-empty TOKEN")
    tokens = [token for token, _ in args.decode]
    twice = next((t for t in tokens if tokens.count(t) > 1), None)
    if twice is not None:  # the last would silently replace the others
        raise TinygenError(f"--decode gives {twice!r} twice; give each token one TEXT")
    for pattern, _ in args.replace_regex:
        if problem := regex_problem(pattern):
            raise TinygenError(f"--replace-regex {pattern!r} {problem}")
    rules = [{"pattern": p, "regex": False, "token": t} for p, t in args.replace]
    rules += [{"pattern": p, "regex": True, "token": t} for p, t in args.replace_regex]
    data = {"encode": rules, "decode": dict(args.decode), "ban": list(args.ban)}
    return Replacements.from_json(data, source="command line")


def run(args: argparse.Namespace) -> int:
    refuse_field_without_records(args.corpus, args.field)
    replacements = replacements_from_args(args)
    check_parents(args.output)  # before the training, not after it
    beside = args.output.parent  # replacements.json and fields.json go there too
    # A model's folder (-o gpt2, -o run, an export): its tokenizer.json is the one its
    # embeddings learned, and a new one there would leave the model decoding nonsense.
    model = next((name for name in ("config.json", "tinygen.json") if (beside / name).is_file()),
                 None)
    if model is not None:
        raise TinygenError(f"{beside} holds a model ({model}): a tokenizer written there would "
                           f"be taken for the model's own; write it to another folder")
    refuse_overwriting_inputs(args.corpus,
                              [args.output, beside / REPLACEMENTS_FILE, beside / FIELDS_FILE])
    schema = FieldSchema.parse(args.field) if args.field else None
    # An earlier tokenizer's rules or fields, left beside this one, would be read with it (or
    # refuse it): this run writes neither file, so say so before the training.
    for name, writes in ((REPLACEMENTS_FILE, bool(replacements.tokens())),
                         (FIELDS_FILE, schema is not None)):
        stale = beside / name
        if not writes and stale.exists():
            raise TinygenError(f"{stale} is left from another tokenizer and would be read with "
                               f"this one; delete it, or write the tokenizer to another folder")
    specials = tuple(args.special_token) + tuple(schema.tokens() if schema else ())
    config = TokenizerConfig(vocab_size=args.vocab_size, special_tokens=specials,
                             min_frequency=args.min_frequency, replacements=replacements,
                             progress=sys.stderr.isatty())  # off a terminal its bar is blank lines
    documents = read_corpus(args)
    tokenizer = train_tokenizer(documents, config)
    replaced = args.output.is_file()
    # Training and export find fields.json beside the tokenizer, as replacements.json.
    path = save_tokenizer(tokenizer, args.output, replacements, schema)
    size = tokenizer.get_vocab_size()
    if size < args.vocab_size:  # BPE stops when no pair is frequent enough to merge
        print(f"note: the tokenizer has {size} tokens, fewer than the {args.vocab_size} asked: "
              f"the corpus holds no more pairs to merge (seen at least --min-frequency "
              f"{args.min_frequency} times)", file=sys.stderr)
    docs = len(documents)
    print(f"wrote {path}: {size} tokens from {docs} document{'s' * (docs != 1)}",
          file=sys.stderr)
    if replaced:  # caches and runs made with the old one no longer match it (they check, later)
        print(f"note: it replaced the tokenizer that was there; token caches and models made "
              f"with that one need it, not this one", file=sys.stderr)
    return 0

