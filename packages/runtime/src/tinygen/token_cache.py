"""The token cache: an encoded corpus saved once and memory-cheap to load.

A cache file is three msgpack objects in a row, gzip-compressed by default:

1. the header, a map: magic, format_version, tokenizer_sha256 and
   replacements_sha256 (what encoded it), template_end_dropped (only for a
   tokenizer whose template appends ids to every text, Llama's add_eos_token </s>:
   those ids, which the documents do not end with), vocab_size, eos_id, dtype ("uint16"
   when every id fits, else "uint32"), num_tokens, num_documents, the sha256 of
   each of the two arrays below, then
   - sources: the files the text was read from, each a map of path (relative to
     the cache's folder, or absolute when they share only the root), size,
     mtime_ns (null when the file was written within 2 s of being read: a later
     edit in the same clock tick could keep it) and sha256, taken before reading;
   - encode (optional): what `tinygen-train encode` was given, to say how to make
     the cache again: corpus (paths, as sources'), tokenizer, replacements (a path
     or null) and options (its other arguments, as typed);
   - header_sha256, last: the sha256 of the header packed without this key,
     computed so in every format_version, so a damaged format_version reads as
     damage, not as a newer format;
2. the tokens, as one msgpack bin of little-endian `dtype` values;
3. doc_ends, as one bin of little-endian int64: the exclusive end of each document.

The header comes first so a reader checks the version and the tokenizer before
it trusts the rest. Caches written before sources and header_sha256 have neither
and load as before; a header with one but not the other lost a key to damage.
sources and encode are optional keys, not a new format_version: older readers
ignore them. The trainer writes caches; the runtime reads them to dedupe
generated text against the training data, so the format lives here, beside the
manifest (needs msgpack: pip install tinygen[dedupe]). Files are written to a temp file and renamed into place, so
an interrupted write never leaves a half file under the real name.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import os
import shlex
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Sequence

import msgpack
import numpy as np

from .atomic import atomic_write
from .errors import TinygenError
from .file_digest import file_sha256

FORMAT_VERSION = 1
MAGIC = "tinygen-tokens"
GZIP_MAGIC = b"\x1f\x8b"
# How every cache begins, to know one whose first bytes are damaged: gzip's header
# as save_token_cache writes it (deflate, no flags, mtime 0, unknown OS), and,
# after the header map's size byte(s), its first key and value and second key.
GZIP_HEADER = GZIP_MAGIC + b"\x08\x00\x00\x00\x00\x00\x00\xff"
HEADER_START = msgpack.packb("magic") + msgpack.packb(MAGIC) + msgpack.packb("format_version")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DOC_ENDS_DTYPE = np.dtype("<i8")
# A source file modified this close to being read may change again within its clock's
# tick (a second on some file systems) without changing its mtime: its mtime is not kept.
RACY_NS = 2_000_000_000


class TokenCacheError(TinygenError):
    """A token cache that is corrupt, from a newer version, or from another tokenizer."""


@dataclass(frozen=True)
class TokenCache:
    tokens: np.ndarray  # (N,) uint16 or uint32, read-only
    doc_ends: np.ndarray  # (D,) int64, read-only
    header: dict[str, Any]


def fingerprint_source(path: str | Path) -> dict[str, Any]:
    """What a cache records of a file it is encoded from; taken before the file is read, so
    an edit while encoding shows as a change later, never the other way round."""
    path = Path(path).resolve()
    stat = path.stat()
    racy = time.time_ns() - stat.st_mtime_ns < RACY_NS
    return {"path": path, "size": stat.st_size, "mtime_ns": None if racy else stat.st_mtime_ns,
            "sha256": file_sha256(path)}


def changed_sources(path: str | Path, header: dict[str, Any]) -> list[Path]:
    """The source files of a cache that still exist but differ from what it was encoded from.

    Missing ones are not changed: caches are often shipped without their text. The same size
    and mtime is taken as unchanged (as make and rsync do); a new mtime alone is hashed, so a
    checkout or a copy that keeps the text is no change."""
    changed = []
    for source in header.get("sources") or ():
        file = source_path(path, source["path"])
        try:
            if not file.is_file():
                continue
            stat = file.stat()
            if stat.st_size != source["size"] or (stat.st_mtime_ns != source["mtime_ns"]
                                                  and file_sha256(file) != source["sha256"]):
                changed.append(file)
        except OSError:  # unreadable now: nothing to compare
            continue
    return changed


def recorded_path(cache: str | Path, file: str | Path) -> str:
    """`file` as a cache at `cache` records it: relative to the cache's folder, so the two
    can move together, unless they share only the root (then absolute)."""
    file, folder = Path(file).resolve(), Path(cache).resolve().parent
    try:
        if os.path.commonpath([file, folder]) != file.anchor:
            return os.path.relpath(file, folder)
    except ValueError:  # on two Windows drives
        pass
    return str(file)


def source_path(cache: str | Path, recorded: str) -> Path:
    """A path recorded in the cache at `cache`, as a path from here."""
    return Path(os.path.normpath(Path(cache).parent / recorded))


def save_token_cache(path: str | Path, tokens: np.ndarray, doc_ends: np.ndarray,
                     encoder_info: dict[str, Any], compress: bool = True,
                     sources: Sequence[dict[str, Any]] = (),
                     encode: dict[str, Any] | None = None) -> Path:
    """Write tokens and document ends atomically; `encoder_info` is `Encoder.describe()`,
    `sources` the `fingerprint_source` of each file read, `encode` the command's arguments
    (the header's `encode`, with paths as given here)."""
    path = Path(path)
    dtype_name = next((n for n, d in DTYPES.items() if d == tokens.dtype.newbyteorder("<")), None)
    if dtype_name is None:
        raise TypeError(f"tokens must be uint16 or uint32, got {tokens.dtype}")
    token_bytes = np.ascontiguousarray(tokens, dtype=DTYPES[dtype_name]).tobytes()
    end_bytes = np.ascontiguousarray(doc_ends, dtype=DOC_ENDS_DTYPE).tobytes()
    header = {
        "magic": MAGIC,  # first key, so a sniff of the first bytes finds it
        "format_version": FORMAT_VERSION,
        **encoder_info,
        "dtype": dtype_name,
        "num_tokens": int(tokens.size),
        "num_documents": int(doc_ends.size),
        "tokens_sha256": hashlib.sha256(token_bytes).hexdigest(),
        "doc_ends_sha256": hashlib.sha256(end_bytes).hexdigest(),
        "sources": _unique([{**s, "path": recorded_path(path, s["path"])} for s in sources]),
    }
    if encode is not None:
        header["encode"] = {**encode, **{key: recorded_path(path, encode[key])
                                         for key in ("tokenizer", "replacements")
                                         if encode.get(key)},
                            "corpus": [recorded_path(path, c) for c in encode["corpus"]]}
    header["header_sha256"] = _header_sha256(header)
    packer = msgpack.Packer(use_bin_type=True)

    def write(f: BinaryIO) -> None:
        # mtime=0: the same corpus gives byte-identical files.
        out = gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) if compress else f
        for obj in (header, token_bytes, end_bytes):
            out.write(packer.pack(obj))
        if compress:
            out.close()

    atomic_write(path, write)
    return path


def load_token_cache(path: str | Path, expect: dict[str, Any] | None = None,
                     token_name: Callable[[int], str | None] | None = None) -> TokenCache:
    """Read and verify a cache; `expect` (an `Encoder.describe()`) must match its header.

    `token_name` (the tokenizer's id_to_token) names tokens in a mismatch message.
    """
    path = Path(path)
    if path.is_dir():
        raise TinygenError(f"{path} is a folder; give a token cache file (.tokens, made by "
                           f"tinygen-train encode)")
    if not path.is_file():
        raise TinygenError(f"token cache not found: {path}")
    raw = path.read_bytes()
    gzipped = raw[:2] == GZIP_MAGIC
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error):
            raise _corrupt(path, "its gzip stream is truncated or damaged") from None
    elif _damaged_copy_of(raw, GZIP_HEADER):
        raise _corrupt(path, "its gzip header is damaged")
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(raw), 1))
    unpacker.feed(raw)
    header = _next(unpacker, path, "header")
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        if _header_start_in(raw):
            raise _corrupt(path, "its header is damaged")
        # No corpus reader decompresses, so a gzip file that is not a cache is nothing we read.
        what = " (a gzip file: decompress it to use its text)" if gzipped else ""
        raise TokenCacheError(f"{path}: not a tinygen token cache{what}")
    _check_header(path, header)
    _check_version(path, header.get("format_version"))
    if expect is not None:
        check_encoder(path, header, expect, token_name)
    token_bytes = _next(unpacker, path, "tokens")
    end_bytes = _next(unpacker, path, "document ends")
    if next(unpacker, None) is not None:
        raise _corrupt(path, "it has data after its last array")
    dtype = DTYPES.get(header.get("dtype"))
    if (dtype is None or not isinstance(token_bytes, bytes) or not isinstance(end_bytes, bytes)
            or len(token_bytes) != header.get("num_tokens", -1) * dtype.itemsize
            or len(end_bytes) != header.get("num_documents", -1) * DOC_ENDS_DTYPE.itemsize):
        raise _corrupt(path, "its arrays do not match the header")
    for name, data in (("tokens_sha256", token_bytes), ("doc_ends_sha256", end_bytes)):
        if hashlib.sha256(data).hexdigest() != header.get(name):
            raise _corrupt(path, "its checksum does not match (damaged on disk?)")
    tokens = np.frombuffer(token_bytes, dtype=dtype)
    doc_ends = np.frombuffer(end_bytes, dtype=DOC_ENDS_DTYPE)
    if doc_ends.size and (doc_ends[-1] != tokens.size or np.any(np.diff(doc_ends) <= 0)):
        raise _corrupt(path, "its document ends are inconsistent")
    return TokenCache(tokens, doc_ends, header)


def check_encoder(path: Path, header: dict[str, Any], expect: dict[str, Any],
                  token_name: Callable[[int], str | None] | None = None) -> None:
    """The cache must come from the same tokenizer and replacement rules as the run using it."""
    if any(key not in header for key in ("tokenizer_sha256", "replacements_sha256", "eos_id")):
        # A damaged key, not another tokenizer: "fingerprint None" would mislead.
        raise _corrupt(path, "its header is damaged")
    redo = "re-encode it with 'tinygen-train encode' using this tokenizer"
    if header.get("tokenizer_sha256") != expect["tokenizer_sha256"]:
        theirs, ours = str(header.get("tokenizer_sha256"))[:12], expect["tokenizer_sha256"][:12]
        raise TokenCacheError(f"{path}: encoded with a different tokenizer (fingerprint {theirs}, "
                              f"this one is {ours}); {redo}")
    if header.get("replacements_sha256") != expect["replacements_sha256"]:
        raise TokenCacheError(f"{path}: encoded with different replacement rules; {redo}")
    if header.get("template_end_dropped") != expect.get("template_end_dropped"):
        # Same tokenizer.json: an older encode kept what its template appends (Llama's </s>).
        raise TokenCacheError(f"{path}: encoded by an older tinygen-train, which ended every "
                              f"document with the tokenizer's end token twice; {redo}")
    if header.get("eos_id") != expect["eos_id"]:
        # Same tokenizer, other end-of-text token (a model whose EOS is not the first
        # candidate encode picks, e.g. <|im_end|>): re-encoding as before cannot help.
        theirs, ours = header.get("eos_id"), expect["eos_id"]
        their_name, our_name = (token_name(i) if token_name and isinstance(i, int) else None
                                for i in (theirs, ours))
        fix = (f"re-encode it with tinygen-train encode --eos-token {shlex.quote(our_name)}, "
               f"or train with --eos-token {shlex.quote(their_name)}"
               if their_name and our_name else
               "re-encode it with tinygen-train encode --eos-token naming this run's token")
        raise TokenCacheError(f"{path}: documents end with {_token(theirs, their_name)}, "
                              f"this run uses {_token(ours, our_name)}; {fix}")


def is_token_cache(path: str | Path) -> bool:
    """Whether `path` is a token cache, maybe a damaged one (by content, not by name).

    Loose on purpose, so a cache with damaged first bytes reaches load_token_cache
    and its "corrupt" error instead of being read as text: any gzip file (no corpus
    reader decompresses, and 0x1f 0x8b is never UTF-8), or a file that is not UTF-8
    and begins as every cache does but for a few bytes.
    """
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:2] == GZIP_MAGIC:
        return True
    return (_damaged_copy_of(head, GZIP_HEADER) or _header_start_in(head)) and not _utf8(head)


def _check_version(path: Path, version: Any) -> None:
    if not isinstance(version, int) or version < 1:
        raise _corrupt(path, "its header has no valid format_version")
    if version > FORMAT_VERSION:
        raise TokenCacheError(
            f"{path}: token cache format {version} is newer than this tinygen-trainer reads "
            f"({FORMAT_VERSION}); upgrade with: pip install -U tinygen-trainer"
        )


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """The header matches its checksum, so a damaged value (a tokenizer's fingerprint, say)
    is called damage, not another tokenizer."""
    stored = header.get("header_sha256")
    if stored is None and "sources" not in header:
        return  # written before either key
    if stored != _header_sha256(header):
        raise _corrupt(path, "its header is damaged")


def _header_sha256(header: dict[str, Any]) -> str:
    # Re-packing what was unpacked gives the same bytes: msgpack packs each value one way.
    rest = {key: value for key, value in header.items() if key != "header_sha256"}
    return hashlib.sha256(msgpack.packb(rest, use_bin_type=True)).hexdigest()


def _unique(sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A file given twice (a folder and a file in it) is recorded once."""
    return list({s["path"]: s for s in sources}.values())


def _next(unpacker: msgpack.Unpacker, path: Path, what: str) -> Any:
    try:
        return unpacker.unpack()
    except msgpack.OutOfData:
        raise _corrupt(path, f"it ends before its {what} (truncated)") from None
    except (ValueError, TypeError, msgpack.UnpackException):
        raise _corrupt(path, f"its {what} cannot be decoded") from None


def _damaged_copy_of(data: bytes, start: bytes) -> bool:
    """Whether `data` begins with `start`, or with `start` but for a quarter of its bytes."""
    same = sum(a == b for a, b in zip(data, start))
    return len(data) >= len(start) and 4 * same >= 3 * len(start)


def _header_start_in(data: bytes) -> bool:
    # After a fixmap's 1 size byte, or a map16's 3 (more than 15 header keys).
    return any(_damaged_copy_of(data[skip:skip + len(HEADER_START)], HEADER_START)
               for skip in (1, 3))


def _utf8(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: may end mid-character
    except UnicodeDecodeError:
        return False
    return True


def _token(token_id: Any, name: str | None) -> str:
    return f"{name} (token {token_id})" if name else f"token {token_id}"


def _corrupt(path: Path, why: str) -> TokenCacheError:
    return TokenCacheError(f"{path}: token cache is corrupt: {why}; delete it and encode again")
