"""What stop strings cost a text: the per-step searches for stop strings in its new text.

    .venv/bin/python tools/bench/bench_stop_strings.py

Every step of a text with stop strings holds back the longest end of the text that
begins one of them (decoding._partial_stop), so that a stop string is never shown in
part. This grows a text word by word, as decoding does, and times that search alone
for stop strings of several lengths (4 of each, as a server request may send). A
second table times a whole step's stop handling (SequenceState.advance, a decoder
that shows one word a token) for many short stop strings, as `generate` (nothing
shown until the end) and `stream` run it. No model: the searches are plain Python
over strings, and so is their cost.
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

from tinygen.config import GenerationConfig  # noqa: E402
from tinygen.decoding import SequenceState, _partial_stop  # noqa: E402

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


class _Words:
    """A stream decoder that shows one word a token."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def step(self, token: int) -> str:
        return " " + self.rng.choice(WORDS)

    def finish(self) -> str:
        return ""


def advance_seconds(stop_count: int, steps: int, show: bool, seed: int = 0) -> float:
    """One text of `steps` tokens through SequenceState.advance with `stop_count` stop strings
    of 6 characters that never occur (the whole text is searched, as for most texts)."""
    stops = tuple(f"qq{i:04d}" for i in range(stop_count))
    row = SequenceState([1], seed, _Words(seed), GenerationConfig(max_new_tokens=steps, stop=stops),
                        frozenset(), 10 ** 9)
    start = time.perf_counter()
    for position in range(steps):
        row.advance(5, position, show=show)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="words (steps) in the text")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median)")
    parser.add_argument("--lengths", default="4,100,1000,240000",
                        help="characters in each stop string, comma-separated")
    parser.add_argument("--counts", default="4,100,1000",
                        help="how many stop strings in the second table, comma-separated")
    args = parser.parse_args(argv)
    lengths = [int(n) for n in args.lengths.split(",") if n.strip().isdigit()]
    if len(lengths) != len(args.lengths.split(",")) or min(lengths) < 1:
        parser.error(f"--lengths takes whole numbers >= 1, comma-separated, got {args.lengths!r}")
    counts = [int(n) for n in args.counts.split(",") if n.strip().isdigit()]
    if len(counts) != len(args.counts.split(",")) or min(counts) < 1:
        parser.error(f"--counts takes whole numbers >= 1, comma-separated, got {args.counts!r}")
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    print(f"| 4 stop strings of | ms for a {args.steps}-step text (median of {args.repeats}) "
          f"| µs a step |")
    print("|---:|---:|---:|")
    for length in lengths:
        s = statistics.median(seconds(length, args.steps, seed) for seed in range(args.repeats))
        print(f"| {length:,} chars | {s * 1e3:,.1f} | {s / args.steps * 1e6:,.1f} |", flush=True)
    print(f"\n| stop strings of 6 chars | generate: ms for {args.steps} tokens | stream: ms |")
    print("|---:|---:|---:|")
    for count in counts:
        shown = [statistics.median(advance_seconds(count, args.steps, show, seed)
                                   for seed in range(args.repeats)) for show in (False, True)]
        print(f"| {count:,} | {shown[0] * 1e3:,.1f} | {shown[1] * 1e3:,.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
