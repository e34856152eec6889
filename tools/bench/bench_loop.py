"""Where a generated token's time goes: onnxruntime's run against tinygen's own loop around it.

    .venv/bin/python tools/bench/bench_loop.py                      # the embedded tiny model
    .venv/bin/python tools/bench/bench_loop.py --model DIR --batches 1,8 --record

For each decoding setting and batch, generates --new-tokens tokens per row (EOS
ignored) --repeats times and reports the medians per generated token of the whole
`generate` call, of the time inside the model's `run_with_iobinding` / `run`, and of
the rest: logits processors, sampling, stop checks and bookkeeping. On a small model
the rest is a large share of the token; this is the table that shows it.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from bench_decode import DOC, REPO, _int_list  # noqa: E402
from machine import describe  # noqa: E402
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402

# name -> generation options ("sampling" is the default: plain sampling at temperature 1)
SETTINGS = {
    "greedy": {"do_sample": False},
    "sampling": {},
    "top_p 0.9": {"top_p": 0.9},
    "typical_p 0.9": {"typical_p": 0.9},
}


class RunClock:
    """Wraps the session's run calls and adds up the seconds spent inside them."""

    def __init__(self, session):
        self.seconds = 0.0
        for name in ("run_with_iobinding", "run"):
            setattr(session, name, self._timed(getattr(session, name)))

    def _timed(self, run):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def measure(generator, clock: RunClock, options: dict, batch: int, new_tokens: int,
            repeats: int) -> tuple[float, float]:
    """Median µs per generated token: (whole call, inside the model's runs)."""
    whole, inside = [], []
    for repeat in range(repeats + 1):  # the first is a warm-up
        clock.seconds = 0.0
        start = time.perf_counter()
        out = generator.generate("Once upon a time", n=batch, batch_size=batch, seed=repeat,
                                 max_new_tokens=new_tokens, stop_at_eos=False, **options)
        elapsed = time.perf_counter() - start
        tokens = sum(len(c.token_ids) for c in out)
        if tokens != batch * new_tokens:
            raise ScriptError(f"expected {batch * new_tokens} tokens, got {tokens}")
        if repeat:
            whole.append(elapsed / tokens * 1e6)
            inside.append(clock.seconds / tokens * 1e6)
    return statistics.median(whole), statistics.median(inside)


def main() -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="an exported model directory "
                   "(default: the embedded tiny model)")
    p.add_argument("--batches", type=_int_list, default="1", help="comma-separated batch sizes (default: 1)")
    p.add_argument("--new-tokens", type=int, default=200, help="tokens generated per row")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per row of the table")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    p.add_argument("--record", action="store_true", help=f"append the table to {DOC.relative_to(REPO)}")
    args = p.parse_args()
    if args.new_tokens < 2 or args.repeats < 1:
        raise ScriptError("--new-tokens must be >= 2 and --repeats >= 1")

    from tinygen import TextGenerator

    generator = TextGenerator(args.model, device="cpu", threads=args.threads)
    clock = RunClock(generator.model.session)
    lines = ["| decoding | batch | tok/s | µs/token | in onnxruntime | outside it | outside share |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, options in SETTINGS.items():
        for batch in args.batches:
            whole, inside = measure(generator, clock, options, batch, args.new_tokens, args.repeats)
            lines.append(f"| {name} | {batch} | {1e6 / whole:.0f} | {whole:.0f} | {inside:.0f} | "
                         f"{whole - inside:.0f} | {(whole - inside) / whole:.0%} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        model = args.model or "the embedded tiny model"
        with DOC.open("a", encoding="utf-8") as f:
            f.write(f"\n## {stamp}: a token's time inside and outside onnxruntime (tools/bench/bench_loop.py)\n\n"
                    f"- machine: {describe()}\n- model: {model}; {args.new_tokens} tokens per row, "
                    f"median of {args.repeats} calls after a warm-up, per generated token\n\n{table}\n")
        print(f"appended to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main)
