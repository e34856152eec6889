"""A transformers model folder's tokenizer as transformers loads it, for folders that need it built.

Many folders (GPT-2 as first published, older checkpoints) ship only a slow
tokenizer's files: vocab.json + merges.txt, or a SentencePiece tokenizer.model.
transformers converts those to a fast tokenizer when it loads one, adding the
special tokens tokenizer_config.json / special_tokens_map.json name. A folder's
tokenizer.json too can encode otherwise than transformers does: Llama's tokenizer
class rebuilds its BOS / EOS template from tokenizer_config.json's add_bos_token /
add_eos_token. Export (which writes tokenizer.json for the runtime) and finetuning
(which encodes the corpus) both take the tokenizer from here, so a model is trained
on the very ids its export reads.
"""

from __future__ import annotations

import json
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

    from .export.noise import library_noise_dropped  # here: the export package imports this one

    try:
        with library_noise_dropped():  # finetuning a Llama says "default legacy behaviour" else
            tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, local_files_only=True)
    except Exception as exc:  # conversion raises many unrelated types (missing sentencepiece, ...)
        raise TinygenError(f"{folder}: cannot build tokenizer.json from its tokenizer files "
                           f"({first_line(exc)})") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise TinygenError(f"{folder}: transformers has no fast tokenizer for these files, "
                           f"so there is no tokenizer.json to write")
    return tokenizer.backend_tokenizer


def model_tokenizer(folder: Path):
    """The tokenizer a model folder encodes with (folder_tokenizer): its tokenizer.json's, or
    one built from its slow tokenizer's files; None when it has neither."""
    from .data.encoder import load_tokenizer

    own_file = folder / "tokenizer.json"
    own = load_tokenizer(own_file) if own_file.is_file() else None
    if own is None and not has_slow_tokenizer(folder):
        return None
    return folder_tokenizer(folder, own)


def folder_tokenizer(folder: Path, own=None):
    """The `tokenizers` Tokenizer `folder` encodes with: `own` (its tokenizer.json, loaded; None
    when it has none) unless transformers, loading the folder, encodes otherwise.

    `own` itself (not a copy) where it encodes alike, so a folder's token caches, which
    fingerprint the tokenizer, stay valid; transformers is asked only when
    tokenizer_config.json sets add_bos_token / add_eos_token."""
    if own is not None and not _sets_special_tokens(folder):
        return own
    theirs = transformers_tokenizer(folder)
    return own if own is not None and _encode_alike(own, theirs) else theirs


def _sets_special_tokens(folder: Path) -> bool:
    """Whether tokenizer_config.json says whether to add BOS / EOS: transformers' tokenizer
    class may then rewrite tokenizer.json's post-processor when it loads (Llama's
    add_bos_token false drops the BOS the file's template adds)."""
    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("add_bos_token" in config or "add_eos_token" in config)


def _encode_alike(own, theirs) -> bool:
    """Whether two tokenizers give every text the same ids: all but the post-processor the
    same, and that adds the same special tokens to a text (a rebuilt Llama template differs
    from the file's in the type ids of pairs, which nothing here encodes)."""
    ignored = ("post_processor", "truncation", "padding")  # the encoder turns off the last two
    ours, other = (json.loads(t.to_str()) for t in (own, theirs))
    if any(ours.get(key) != other.get(key) for key in (set(ours) | set(other)) - set(ignored)):
        return False
    return own.encode("a").ids == theirs.encode("a").ids
