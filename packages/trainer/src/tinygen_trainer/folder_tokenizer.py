"""A transformers model folder's tokenizer as transformers loads it, for folders that need it built.

Many folders (GPT-2 as first published, older checkpoints) ship only a slow
tokenizer's files: vocab.json + merges.txt, or a SentencePiece tokenizer.model.
transformers converts those to a fast tokenizer when it loads one, adding the
special tokens tokenizer_config.json / special_tokens_map.json name. Export (which
writes tokenizer.json for the runtime) and finetuning (which encodes the corpus)
both build it here, so a model is trained on the very ids its export reads.
"""

from __future__ import annotations

from pathlib import Path

from tinygen.errors import TinygenError, first_line

# Vocabulary files from which transformers' AutoTokenizer can build a fast tokenizer
# (tokenizer_config.json alone is not one: save_pretrained writes it for every model).
SLOW_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                        "sentencepiece.bpe.model", "vocab.txt")


def has_slow_tokenizer(folder: Path) -> bool:
    """Whether `folder` holds files transformers can build a fast tokenizer from."""
    return any((folder / name).is_file() for name in SLOW_TOKENIZER_FILES)


def transformers_tokenizer(folder: Path):
    """The `tokenizers` Tokenizer of transformers' fast tokenizer for `folder` once loaded
    (built from the slow tokenizer's files where there is no tokenizer.json)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, local_files_only=True)
    except Exception as exc:  # conversion raises many unrelated types (missing sentencepiece, ...)
        raise TinygenError(f"{folder}: cannot build tokenizer.json from its tokenizer files "
                           f"({first_line(exc)})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise TinygenError(f"{folder}: transformers has no fast tokenizer for these files, "
                           f"so there is no tokenizer.json to write")
    return tokenizer.backend_tokenizer
