"""`tinygen-train encode`: tokenize a corpus once into a token cache that `train` loads fast."""

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
from tinygen.replacements import Replacements
from tinygen.token_cache import fingerprint_source

from ..data.dataset import TokenDataset
from ..data.encoder import Encoder
from ..data.sources import corpus_files
from .corpus_args import (add_corpus_arguments, read_corpus, refuse_field_without_records,
                          refuse_overwriting_inputs)

HELP = "Encode a corpus with a tokenizer into a token cache (msgpack, gzip)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_corpus_arguments(parser)
    # A str: Path would drop the slash of `-o newdir/`, which names a folder (run checks it).
    parser.add_argument("-o", "--output", required=True, help="the token cache to write")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="tokenizer.json to encode with")
    parser.add_argument("--replacements", type=Path, default=None,
                        help="replacements.json (default: the one beside the tokenizer, if any)")
    parser.add_argument("--eos-token", default=None,
                        help="token ending each document (default: <|endoftext|>, </s>, ...)")
    parser.add_argument("--no-compress", dest="compress", action="store_false",
                        help="write plain msgpack instead of gzip-compressed: larger, a little "
                             "faster to load")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    output, args.output = os.fspath(args.output), Path(args.output)
    refuse_field_without_records(args.corpus, args.field)
    beside = args.tokenizer.parent / REPLACEMENTS_FILE
    replacements, rules_file = None, None
    if args.replacements is not None:
        replacements, rules_file = Replacements.load(args.replacements), args.replacements
    elif beside.is_file():
        replacements, rules_file = Replacements.load(beside), beside
    encoder = Encoder.load(args.tokenizer, replacements, args.eos_token)
    schema = FieldSchema.parse(args.field) if args.field else None
    missing = [t for t in (schema.tokens() if schema else ()) if encoder.tokenizer.token_to_id(t) is None]
    if missing:  # the cache would hold `<|title|>` as byte pieces, not as the field's token
        raise TinygenError(f"{args.tokenizer} has no token {missing[0]}: make it with `tinygen-train "
                           f"tokenizer --field {args.field}`, or train on the records themselves "
                           f"(`tinygen-train train FILE --field {args.field}` adds the field tokens)")
    beside_fields = args.tokenizer.parent / FIELDS_FILE
    if schema and beside_fields.is_file():
        # Training a cache takes the tokenizer's fields.json for the model: records written
        # in another order or with other fields would condition generation on a shape never
        # trained on, silently. (Fewer fields, in its order, are records that lack some.)
        theirs = FieldSchema.load(beside_fields)
        order = [theirs.names.index(n) if n in theirs.names else -1 for n in schema.names]
        if -1 in order or order != sorted(order):
            raise TinygenError(f"--field {args.field} does not follow the fields of {args.tokenizer} "
                               f"({beside_fields}: {','.join(theirs.names)}), which training gives "
                               f"the model; name them in that order, or train a tokenizer with "
                               f"--field {args.field}")
    # Before the corpus is encoded, not after; `-o newdir/` wrote a file named newdir.
    if args.output.is_dir() or output.endswith(("/", os.sep)):
        what = "is a folder" if args.output.is_dir() else "ends in a slash: a folder"
        raise TinygenError(f"-o {output} {what}; give the token cache's file path, "
                           f"e.g. {args.output / 'train.tokens'}")
    check_parents(args.output)
    refuse_overwriting_inputs(args.corpus, [args.output], [args.tokenizer, rules_file])
    # Before reading: the cache then says which text it holds, and train warns once it changes.
    sources = [fingerprint_source(f) for p in args.corpus for f in corpus_files(p)]
    documents = read_corpus(args)
    name = ", ".join(str(p) for p in args.corpus)
    dataset = TokenDataset.from_documents(documents, encoder, name=name, progress=not args.quiet)
    path = dataset.save(args.output, encoder, compress=args.compress, sources=sources,
                        encode=recorded_arguments(args))
    docs = dataset.num_documents
    print(f"wrote {path}: {dataset.num_tokens:,} tokens in {docs:,} document{'s' * (docs != 1)} "
          f"({dataset.tokens.dtype.name}, {path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


def recorded_arguments(args: argparse.Namespace) -> dict:
    """This command's arguments as the cache records them (its header's `encode`), so a warning
    about changed text can say how to encode it again: the same options, not just the files."""
    options = [*(["--field", args.field] if args.field else []),
               *(["--errors", args.errors] if args.errors != "strict" else []),
               *(["--line-by-line"] if args.line_by_line else []),
               *(["--eos-token", args.eos_token] if args.eos_token else []),
               *([] if args.compress else ["--no-compress"])]
    return {"corpus": list(args.corpus), "tokenizer": args.tokenizer,
            "replacements": args.replacements, "options": options}
