"""`tinygen-train encode`: tokenize a corpus once into a token cache that `train` loads fast."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tinygen.replacements import FILE_NAME as REPLACEMENTS_FILE
from tinygen.replacements import Replacements

from ..data.dataset import TokenDataset
from ..data.encoder import Encoder
from ..data.sources import ERRORS, read_documents

HELP = "Encode a corpus with a tokenizer into a token cache (msgpack, gzip)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="+", type=Path,
                        help="text files, folders, or CSV/JSONL files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the token cache to write")
    parser.add_argument("--tokenizer", type=Path, required=True,
                        help="tokenizer.json to encode with")
    parser.add_argument("--replacements", type=Path, default=None,
                        help="replacements.json; None: the one beside the tokenizer, if any")
    parser.add_argument("--eos-token", default=None,
                        help="token ending each document; None: <|endoftext|>, </s>, ...")
    parser.add_argument("--field", default=None,
                        help="CSV column / JSONL key with the text; None: 'text'")
    parser.add_argument("--errors", choices=ERRORS, default="strict",
                        help="what to do with bytes that are not UTF-8")
    parser.add_argument("--line-by-line", action="store_true",
                        help="each line of a text file is a document (for train --line-by-line)")
    parser.add_argument("--no-compress", dest="compress", action="store_false",
                        help="write plain msgpack: larger, a little faster to load")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    beside = args.tokenizer.parent / REPLACEMENTS_FILE
    replacements = None
    if args.replacements is not None:
        replacements = Replacements.load(args.replacements)
    elif beside.is_file():
        replacements = Replacements.load(beside)
    encoder = Encoder.load(args.tokenizer, replacements, args.eos_token)
    documents = []
    for path in args.corpus:
        documents.extend(read_documents(path, field=args.field, errors=args.errors,
                                        line_by_line=args.line_by_line))
    name = ", ".join(str(p) for p in args.corpus)
    dataset = TokenDataset.from_documents(documents, encoder, name=name, progress=not args.quiet)
    path = dataset.save(args.output, encoder, compress=args.compress)
    print(f"wrote {path}: {dataset.num_tokens:,} tokens in {dataset.num_documents:,} documents "
          f"({dataset.tokens.dtype.name}, {path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0
