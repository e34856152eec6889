"""The corpus arguments `tokenizer` and `encode` share: what to read and how."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.sources import ERRORS, read_documents


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="+", type=Path,
                        help="text files, folders, or CSV/JSONL files")
    parser.add_argument("--field", default=None,
                        help="CSV column / JSONL key with the text (default: 'text'); "
                             "several (title,body) write records with field tokens")
    parser.add_argument("--errors", choices=ERRORS, default="strict",
                        help="what to do with bytes that are not UTF-8")
    parser.add_argument("--line-by-line", action="store_true",
                        help="each line of a text file is a document (for train --line-by-line)")


def read_corpus(args: argparse.Namespace) -> list[str]:
    documents: list[str] = []
    for path in args.corpus:
        documents.extend(read_documents(path, field=args.field, errors=args.errors,
                                        line_by_line=args.line_by_line))
    return documents
