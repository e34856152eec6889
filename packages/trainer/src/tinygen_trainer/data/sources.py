"""Reading a corpus: a text file, a folder of files, or one field of a CSV / JSONL / JSON file.

Several fields (`field="title,keywords,body"`) make each record one document
written with field tokens (tinygen.fields), for context-conditioned generation.

Every reader returns a list of documents (str). A text file is one document, or
one document per non-empty line in line-by-line mode; a CSV row or JSONL record
is always one document. Bytes that are not UTF-8 stop the read with the file and
byte offset, unless errors="replace" asks for U+FFFD instead; a file that begins with a
UTF-16 or UTF-32 byte-order mark is read in that encoding, and one holding a NUL byte
(binary, or UTF-16 with no mark) is refused either way.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from pathlib import Path

from tinygen.errors import TinygenError
from tinygen.fields import FieldSchema
from tinygen.token_cache import is_token_cache

ERRORS = ("strict", "replace")
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
JSON_SUFFIX = ".json"  # an array of records, or JSON Lines
DEFAULT_FIELD = "text"
# Text that names its encoding: Notepad's "Unicode" and Windows PowerShell's `>` write UTF-16
# with a BOM; read as UTF-8 (or with --errors replace) it is its text between NUL bytes.
# UTF-32 LE's mark begins with UTF-16 LE's, so it is looked for first.
UTF_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
            (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def read_documents(path: str | Path, field: str | None = None, errors: str = "strict",
                   line_by_line: bool = False) -> list[str]:
    """All documents under `path` (a file or a folder, searched recursively, in name order)."""
    if errors not in ERRORS:
        raise TinygenError(f"errors must be one of {', '.join(ERRORS)}, got {errors!r}")
    _refuse_model_folder(Path(path))
    docs: list[str] = []
    for file in corpus_files(path):
        docs.extend(_read_file(file, field, errors, line_by_line))
    return docs


# A model's weights: a folder holding them (a run's --output, an export) is no corpus.
MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "model.onnx", "model.pt")


def _refuse_model_folder(path: Path) -> None:
    """`train run ...` for `train --model run ...`: read as text, the folder's JSON files are no
    records and its weights no UTF-8 (where --errors replace would train on their bytes)."""
    if not path.is_dir():
        return
    found = next((name for name in MODEL_FILES if (path / name).is_file()), None)
    if found is None and any((path / "checkpoints").glob("step-*")):  # a run still training
        found = "checkpoints"
    if found is not None:
        raise TinygenError(f"{path} is a model folder ({found}), not a corpus; finetune a model "
                           f"with --model, and give text files, CSV or JSON(L) as the corpus")


def corpus_files(path: str | Path) -> list[Path]:
    """The files a corpus at `path` is read from: the file itself, or a folder's files,
    recursively, in name order, hidden ones (a dot in any part of the path) left out."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file()]
        files = sorted(p for p in found if not hidden_under(p, path))
        if not files:
            hidden = " but hidden ones (names beginning with a dot), never read" if found else ""
            raise TinygenError(f"{path}: folder has no files{hidden}")
        return files
    if path.is_file():
        return [path]
    raise TinygenError(f"corpus not found: {path}")


def holds_records(path: str | Path) -> bool:
    """Whether the corpus at `path` has a CSV or JSON(L) file, the only files --field reads."""
    return any(f.suffix.lower() in (*CSV_SUFFIXES, *JSONL_SUFFIXES, JSON_SUFFIX)
               for f in corpus_files(path))


def hidden_under(path: Path, root: Path) -> bool:
    """Whether `path`, below `root`, is or lies in a dot-file or dot-folder: never read as corpus."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _read_file(path: Path, field: str | None, errors: str, line_by_line: bool) -> list[str]:
    if is_token_cache(path):  # read as text, with --errors replace, it would "work": as noise
        raise TinygenError(f"{path}: a token cache (or other gzip file), not text; give a cache "
                           f"to `tinygen-train train` as a corpus of its own, and decompress "
                           f"other files first")
    suffix = path.suffix.lower()
    try:
        text = decode_utf8(path, errors)
    except TinygenError:
        if suffix == ".tokens":  # meant as a cache: --errors replace would train on its noise
            raise TinygenError(f"{path}: not a tinygen token cache (nor UTF-8 text); make it "
                               f"again with 'tinygen-train encode'") from None
        raise
    if suffix in CSV_SUFFIXES:
        return _csv_documents(path, text, field or DEFAULT_FIELD)
    if suffix in JSONL_SUFFIXES:
        return _jsonl_documents(path, text, field or DEFAULT_FIELD)
    if suffix == JSON_SUFFIX:
        return _json_documents(path, text, field or DEFAULT_FIELD)
    if line_by_line:
        return [line for line in text.splitlines() if line.strip()]
    return [text] if text.strip() else []


def decode_utf8(path: Path, errors: str = "strict") -> str:
    data = path.read_bytes()
    utf = next((codec for bom, codec in UTF_BOMS if data.startswith(bom)), None)
    if utf is not None:
        try:
            return data.decode(utf, errors=errors)  # the codec drops the BOM
        except UnicodeDecodeError as exc:
            raise TinygenError(f"{path}: not {utf.upper()} at byte {exc.start}, though it begins "
                               f"with its byte-order mark; convert the file to UTF-8 or pass "
                               f"--errors replace") from None
    if data.startswith(b"\xef\xbb\xbf"):  # a BOM is not part of the text
        data = data[3:]
    nul = data.find(b"\x00")
    if nul >= 0:  # no text holds one; --errors replace would train on a binary file's bytes
        raise TinygenError(f"{path}: not text (a NUL byte at byte {nul}): a binary file, or UTF-16 "
                           f"with no byte-order mark; leave it out of the corpus, or convert it "
                           f"to UTF-8")
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TinygenError(
            f"{path}: not UTF-8 at byte {exc.start} (line {line}, byte 0x{data[exc.start]:02x}); "
            f"convert the file to UTF-8 or pass --errors replace"
        ) from None


def _csv_documents(path: Path, text: str, field: str) -> list[str]:
    # The default 128 KiB field limit rejects long documents, which are normal here.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    # strict: a quote never closed is an error, where the lenient reader swallows the rest
    # of the file into one field, silently.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        return _csv_rows(path, reader, field)
    except csv.Error as exc:
        if "end of data" in str(exc):  # the reader ran to the end looking for the closing quote
            raise TinygenError(f"{path}: bad CSV: a quote opened in the record at line "
                               f"{reader.line_num + 1} is never closed") from None
        raise TinygenError(f"{path}: bad CSV at line {reader.reader.line_num} ({exc})") from None


def _csv_rows(path: Path, reader: csv.DictReader, field: str) -> list[str]:
    if reader.fieldnames is None:
        return []
    schema = FieldSchema.parse(field)
    for name in schema.names if schema else (field,):
        if name not in reader.fieldnames:
            raise TinygenError(
                f"{path}: no column '{name}' (columns: {', '.join(reader.fieldnames)}); "
                f"choose with --field"
            )
    rows = (_whole_row(path, reader, row) for row in reader)
    if schema:
        return [doc for doc in (schema.format(row) for row in rows) if doc]
    return [row[field] for row in rows if row[field].strip()]


def _whole_row(path: Path, reader: csv.DictReader, row: dict) -> dict:
    """A row with one cell per column. Another count is a broken record, not a short one: an
    unquoted comma puts the rest of a text in a nameless cell, an unquoted newline splits a
    record in two; read as they are, both would lose text silently."""
    if None in row or None in row.values():  # DictReader's restkey and restval
        cells = len(row) - 1 + len(row[None]) if None in row else sum(v is not None for v in row.values())
        columns = len(reader.fieldnames)
        raise TinygenError(
            f"{path}: line {reader.line_num} has {cells} cell{'s' * (cells != 1)}, the header "
            f"{columns} ({', '.join(reader.fieldnames)}); quote cells that hold commas or "
            f"newlines (\"like, this\")")
    return row


def _json_documents(path: Path, text: str, field: str) -> list[str]:
    """A .json file: an array of records, or JSON Lines under that name (what `datasets`'
    to_json writes). Read as plain text, its keys and braces would be trained on."""
    if not text.lstrip().startswith("["):
        try:
            return _jsonl_documents(path, text, field)
        except TinygenError:
            if "\n" in text.strip() and _is_json(text):  # one value over lines: no JSON Lines
                raise TinygenError(f"{path}: one JSON value over several lines, not records: "
                                   f"give an array of records, or JSON Lines (one a line)"
                                   ) from None
            raise
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TinygenError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return _record_documents(path, ((f"record {i}", r) for i, r in enumerate(records, 1)), field)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _jsonl_documents(path: Path, text: str, field: str) -> list[str]:
    def records():
        # "\n" only: splitlines() also splits on U+2028, U+0085, ..., which JSON strings may
        # hold raw (json.dumps(ensure_ascii=False) writes them), cutting records in two.
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise TinygenError(f"{path}: line {number} is not valid JSON ({exc.msg})") from None

    return _record_documents(path, records(), field)


def _record_documents(path: Path, records, field: str) -> list[str]:
    """Documents from (where, record) pairs: `field`'s text, or the fields' schema."""
    schema = FieldSchema.parse(field)
    docs = []
    unseen = set(schema.names) if schema else set()  # a record may leave a field out; all may not
    for where, record in records:
        if schema:
            if not isinstance(record, dict):
                raise TinygenError(f"{path}: {where} is not a JSON object")
            try:
                doc = schema.format(record)
            except TinygenError as exc:
                raise TinygenError(f"{path}: {where}: {exc}") from None
            if doc:
                docs.append(doc)
            unseen -= record.keys()
            continue
        if not isinstance(record, dict) or field not in record:
            raise TinygenError(f"{path}: {where} has no field '{field}'; choose one with --field")
        value = record[field]
        if not isinstance(value, str):
            raise TinygenError(f"{path}: {where}: field '{field}' is {_json_kind(value)}, not a "
                               f"string; fix the record, or choose another with --field")
        if value.strip():
            docs.append(value)
    if unseen and docs:  # no records at all is said elsewhere
        missing = next(n for n in schema.names if n in unseen)
        raise TinygenError(f"{path}: no record has the field '{missing}' (--field {field}); "
                           f"check its spelling")
    return docs


def _json_kind(value: object) -> str:
    """What a JSON value is, as JSON names it (null, not NoneType)."""
    if value is None:
        return "null"
    kinds = ((bool, "a boolean"), ((int, float), "a number"), (dict, "an object"), (list, "a list"))
    return next(kind for types, kind in kinds if isinstance(value, types))
