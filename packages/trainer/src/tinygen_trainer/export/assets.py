"""The files beside the model: `tokenizer.json` and the optional `replacements.json`.

The runtime reads only a `tokenizers` tokenizer.json, so a source that ships
slow tokenizer files (vocab.json + merges.txt, tokenizer.model) is converted
once here, through transformers (as finetuning converts it: folder_tokenizer.py),
instead of teaching the runtime every format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tinygen.errors import TinygenError, first_line
from tinygen.fields import FILE_NAME as FIELDS_FILE
from tinygen.fields import FieldSchema
from tinygen.replacements import FILE_NAME as REPLACEMENTS_FILE
from tinygen.replacements import Replacements

from ..folder_tokenizer import folder_tokenizer, has_slow_tokenizer


TOKENIZER_FILE = "tokenizer.json"


def write_tokenizer(src: Path, dest_dir: Path) -> Path:
    """Copy or build `dest_dir/tokenizer.json`: the tokenizer finetuning encodes with
    (folder_tokenizer); check that `tokenizers` can load it."""
    dest = dest_dir / TOKENIZER_FILE
    if not (src / TOKENIZER_FILE).is_file() and not has_slow_tokenizer(src):
        raise TinygenError(
            f"{src}: no tokenizer (need tokenizer.json, or files transformers can load such as "
            f"vocab.json + merges.txt or tokenizer.model)"
        )
    # A bad tokenizer.json named where it is, not as its copy.
    own = load_tokenizer(src / TOKENIZER_FILE) if (src / TOKENIZER_FILE).is_file() else None
    tokenizer = folder_tokenizer(src, own)
    if tokenizer is own:
        shutil.copyfile(src / TOKENIZER_FILE, dest)
    else:
        tokenizer.save(str(dest))
    load_tokenizer(dest)
    return dest


def load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for a corrupt file
        raise TinygenError(f"{path}: not a loadable tokenizers file ({first_line(exc)})") from exc


def copy_replacements(src: Path, dest_dir: Path, tokenizer_file: Path) -> str | None:
    """Copy `replacements.json` when the source has one; returns its name for the manifest.

    Checked here against the tokenizer so a bad file fails the export, not the
    first generation with the exported model.
    """
    path = src / REPLACEMENTS_FILE
    if not path.is_file():
        return None
    replacements = Replacements.load(path)
    vocab = load_tokenizer(tokenizer_file).get_vocab(with_added_tokens=True)
    replacements.check_vocab(vocab, source=str(path))
    shutil.copyfile(path, dest_dir / REPLACEMENTS_FILE)
    return REPLACEMENTS_FILE



def copy_fields(src: Path, dest_dir: Path, tokenizer_file: Path) -> str | None:
    """Copy `fields.json` (context conditioning) when the source has one; its field tokens
    must be in the tokenizer."""
    path = src / FIELDS_FILE
    if not path.is_file():
        return None
    schema = FieldSchema.load(path)
    vocab = load_tokenizer(tokenizer_file).get_vocab(with_added_tokens=True)
    missing = [t for t in schema.tokens() if t not in vocab]
    if missing:
        raise TinygenError(f"{path}: field token '{missing[0]}' is not in the tokenizer")
    shutil.copyfile(path, dest_dir / FIELDS_FILE)
    return FIELDS_FILE
