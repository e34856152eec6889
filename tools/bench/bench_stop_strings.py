"""What stop strings cost a text: the per-step search for a stop string's start at the text's end.

    .venv/bin/python tools/bench/bench_stop_strings.py

Every step of a text with stop strings holds back the longest end of the text that
begins one of them (decoding._partial_stop), so that a stop string is never shown in
part. This grows a text word by word, as decoding does, and times that search alone
for stop strings of several lengths (4 of each, as a server request may send).
No model: the search is plain Python over strings, and so is its cost.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "packages" / "runtime" / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, run_main  # noqa: E402

from tinygen.decoding import _partial_stop  # noqa: E402

WORDS = ["the", "a", "cat", "sat", "on", "mat", "and", "then", "it", "ran"]


def seconds(stop_chars: int, steps: int, seed: int = 0) -> float:
    """One text of `steps` words, searched after each word for 4 stop strings of `stop_chars`."""
    rng = random.Random(seed)
    stops = tuple("".join(rng.choice("abcdefgh ") for _ in range(stop_chars)) for _ in range(4))
    text, spent = "", 0.0
    for _ in range(steps):
        text += " " + rng.choice(WORDS)
        start = time.perf_counter()
        _partial_stop(text, stops)
        spent += time.perf_counter() - start
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="words (steps) in the text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="4,100,1000,240000",
                        help="characters in each stop string, comma-separated")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",") if n.strip().isdigit()]
    if len(lengths) != len(args.lengths.split(",")) or min(lengths) < 1:
        parser.error(f"--lengths takes whole numbers >= 1, comma-separated, got {args.lengths!r}")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    print(f"| 4 stop strings of | ms for a {args.steps}-step text (median of {args.repeats}) "
          f"| µs a step |")
    print("|---:|---:|---:|")
    for length in lengths:
        s = statistics.median(seconds(length, args.steps, seed) for seed in range(args.repeats))
        print(f"| {length:,} chars | {s * 1e3:,.1f} | {s / args.steps * 1e6:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
