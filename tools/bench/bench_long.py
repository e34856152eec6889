"""Unlimited generation: cost per token past the model's window, and memory over a long text.

    .venv/bin/python tools/bench/bench_long.py [--windows 4] [--record]

Generates `windows` x context_window tokens greedily at batch 1 from the
GPT-2-124M-shaped benchmark model (tools/bench/models.py). Past the window the
runtime slides: it keeps the last half of the tokens and re-prefills them, once
per half window. Reports the mean time per token inside the first window and
past it (re-prefills included, i.e. amortised), their ratio (goal: <= 1.5), and
the process's resident memory as the text grows (goal: flat).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "bench"))
sys.path.insert(0, str(ROOT / "tools"))

import models  # noqa: E402
from machine import describe  # noqa: E402
from script_errors import (ArgumentParser, RawDescriptionHelpFormatter, ScriptError,  # noqa: E402
                           run_main)

from tinygen import TextGenerator  # noqa: E402
from tinygen.decoding import BatchDecoding  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "bench",
                        help="where the benchmark model is built and cached")
    parser.add_argument("--model", type=Path, help="model directory (default: the GPT-2-124M benchmark model)")
    parser.add_argument("--windows", type=int, default=4, help="text length in context windows")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime threads (default: all cores)")
    parser.add_argument("--record", action="store_true", help="append the table to docs/benchmarks.md")
    args = parser.parse_args()
    if args.windows < 1:
        parser.error(f"--windows must be >= 1 (the text is that many context windows), "
                     f"got {args.windows}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")

    model_dir = args.model or models.gpt2_124m(args.work_dir)["onnx"]
    gen = TextGenerator(model_dir, device="cpu", threads=args.threads)
    window = gen.manifest.context_window
    total = args.windows * window
    prompt = gen.tokenizer.encode("Once upon a time")[:8] or [0]
    if window - len(prompt) <= 16:  # the first 16 steps are warm-up, not timed
        raise ScriptError(f"{model_dir}: its window of {window} tokens is too short to time; "
                          f"give a model whose window is over {16 + len(prompt)}")
    config = gen.defaults.merged(do_sample=False, max_new_tokens=total, stop_at_eos=False)
    decoding = BatchDecoding(gen.model, gen.tokenizer, [prompt], [None], config, 0)
    times, marks = [], {}
    checkpoints = {window // 4, window, 2 * window, total - 1}
    while not decoding.done:
        start = time.perf_counter()
        decoding.step()
        times.append(time.perf_counter() - start)
        if len(times) in checkpoints:
            marks[len(times)] = rss_mb()
    edge = window - len(prompt)
    inside = sum(times[16:edge]) / len(times[16:edge])  # skip warm-up steps
    past = sum(times[edge:]) / len(times[edge:])
    rows = [
        "| tokens | window | slides | ms/token inside | ms/token past (amortised) | ratio | RSS MB at tokens |",
        "|---:|---:|---:|---:|---:|---:|---|",
        f"| {total} | {window} | {decoding.slides} | {inside * 1e3:.1f} | {past * 1e3:.1f} | "
        f"{past / inside:.2f}x | " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(marks.items())) + " |",
    ]
    table = "\n".join(rows)
    print(table)
    if args.record:
        heading = (f"\n## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC: unlimited generation "
                   f"(sliding window), {model_dir.name}\n\n- machine: {describe()}; greedy, batch 1\n\n")
        with open(ROOT / "docs" / "benchmarks.md", "a", encoding="utf-8") as f:
            f.write(heading + table + "\n")


if __name__ == "__main__":
    run_main(main)
