"""What exclude_chars costs before the first token: finding the tokens it bans.

    .venv/bin/python tools/bench/bench_exclusions.py

exclude_chars bans every token whose text holds one of the characters or could form
one with a neighbour (tokenizer._ids_for_chars). That is one pass over the vocabulary,
computed once per model and character set (then cached), so its cost is paid by the
first text of a call, the CLI's included. This times it uncached on the embedded
model's 49,152 tokens for character sets from a few ASCII letters to 100 CJK ideographs.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packages" / "runtime" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, run_main  # noqa: E402

SETS = {
    "2 ASCII letters (eE)": "eE",
    "10 digits": "0123456789",
    "1 accented letter (é)": "é",
    "31 accented letters": "àáâãäåæçèéêëìíîïðñòóôõöøùúûüýþÿ",
    "8 typographic (—’€…)": "—–‘’“”…€",
    "2 emoji": "🙂😀",
    "100 CJK ideographs": "".join(chr(c) for c in range(0x4E00, 0x4E64)),
    "U+FFFD": "\ufffd",
}


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per set (median)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    from tinygen import TextGenerator
    from tinygen.tokenizer import _ids_for_chars

    shown = tuple(TextGenerator().tokenizer.shown_bytes)
    find = _ids_for_chars.__wrapped__  # uncached: the first call's cost
    print(f"| characters excluded | tokens banned (of {len(shown):,}) | ms (median of "
          f"{args.repeats}) |")
    print("|---|---:|---:|")
    for name, chars in SETS.items():
        chars = "".join(sorted(set(chars)))
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            banned = find(shown, chars)
            times.append(time.perf_counter() - start)
        print(f"| {name} | {len(banned):,} | {statistics.median(times) * 1e3:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
