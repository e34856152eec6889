"""The corpus arguments `tokenizer` and `encode` share: what to read and how."""

from __future__ import annotations

import argparse
from pathlib import Path

from tinygen.errors import TinygenError

from ..data.sources import ERRORS, corpus_files, hidden_under, holds_records, read_documents


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("corpus", nargs="+", type=Path,
                        help="text files, folders, or CSV/JSONL/JSON files")
    parser.add_argument("--field", default=None,
                        help="CSV column / JSON key with the text (default: 'text'); "
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


def refuse_field_without_records(corpora: list[Path], field: str | None) -> None:
    """Text files have no fields: a --field over them alone would be ignored, silently.
    (A folder mixing text and records is fine: the field picks the records' text.) A blank
    --field is refused too: it read as no --field, the 'text' column."""
    if field is not None and not field.strip():
        raise TinygenError(f"--field {field!r} names no CSV column or JSONL key; give one "
                           f"(several: title,body), or drop --field for 'text'")
    if field is None or any(holds_records(path) for path in corpora):
        return
    names = ", ".join(str(path) for path in corpora)
    raise TinygenError(f"--field {field} picks a CSV column or JSONL key, and {names} "
                       f"hold{'s' * (len(corpora) == 1)} no CSV or JSONL files; drop --field, "
                       f"or give the records (.csv, .jsonl, .json)")


def refuse_overwriting_inputs(corpus: list[Path], outputs: list[Path],
                              inputs: list[Path | None] = ()) -> None:
    """Refuse outputs that are, or lie in, what the command reads: `encode train.txt -o
    train.txt` would replace the corpus with its tokens, and a file written into a corpus
    folder would be read back as text by the next run on that folder."""
    folders = [p.resolve() for p in map(Path, corpus) if p.is_dir()]
    files = {f.resolve() for path in corpus for f in corpus_files(path)}
    files |= {p.resolve() for p in inputs if p is not None}
    for out in outputs:
        where = out.resolve()
        if where in files:
            raise TinygenError(f"{out} is one of this command's inputs and would be overwritten; "
                               f"write to another path")
        folder = next((f for f in folders
                       if where.is_relative_to(f) and not hidden_under(where, f)), None)
        if folder is not None:
            raise TinygenError(f"{out} is inside the corpus folder {folder}, where later runs "
                               f"would read it as text; write it outside that folder")

