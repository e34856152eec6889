"""Held-out perplexity of exported models through the tinygen runtime: what quantization costs.

    .venv/bin/python tools/bench/perplexity.py MODEL_DIR [MODEL_DIR ...] \
        --tokens build/tinymodel/holdout.tokens [--block 256] [--blocks 40]

perplexity = exp(mean next-token negative log-likelihood) over `blocks` consecutive
blocks of `block` held-out tokens, each block scored from an empty cache. The
tokens are fed one at a time, all blocks as one batch, and only the last
position's logits are read, so fused graphs (which compute nothing else) and
optimum's graphs are scored by the same code path the decode loop uses.

Models with different tokenizers compare in bits per character instead (`--text`): the
same held-out characters, encoded by each model's own tokenizer, scored the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def perplexity(model_dir: Path, tokens: np.ndarray, block: int, blocks: int,
               threads: int | None) -> float:
    return float(np.exp(mean_nll(model_dir, tokens, block, blocks, threads)))


def bits_per_char(model_dir: Path, text: str, block: int, threads: int | None) -> float:
    """Mean bits per character of `text` under the model, through its own tokenizer.

    The text is cut into whole blocks of `block` predicted tokens; the mean loss per predicted
    token is scaled by the tokenizer's tokens per character over the whole text.
    """
    from tinygen.manifest import load_manifest
    from tinygen.tokenizer import TextTokenizer

    manifest = load_manifest(model_dir)
    tokens = np.asarray(TextTokenizer(model_dir / manifest.tokenizer_file).encode(text))
    blocks = (len(tokens) - 1) // block
    if blocks < 1:
        raise SystemExit(f"the text is shorter than one block of {block} tokens")
    nats = mean_nll(model_dir, tokens, block, blocks, threads)
    return nats / np.log(2) * len(tokens) / len(text)


def mean_nll(model_dir: Path, tokens: np.ndarray, block: int, blocks: int,
             threads: int | None) -> float:
    from tinygen.manifest import load_manifest
    from tinygen.onnx_model import load_causal_lm

    manifest = load_manifest(model_dir)
    if block >= manifest.context_window:
        raise SystemExit(f"--block must be below the model's window ({manifest.context_window})")
    lm = load_causal_lm(model_dir, manifest, device="cpu", threads=threads)
    rows = np.stack([tokens[i * block:(i + 1) * block + 1] for i in range(blocks)]).astype(np.int64)
    cache = lm.empty_cache(blocks)
    nll = np.zeros(blocks)
    for t in range(block):
        mask = np.ones((blocks, t + 1), np.int64)
        logits, cache = lm.forward(rows[:, t:t + 1], mask, np.full((blocks, 1), t), cache)
        scores = logits[:, -1].astype(np.float64)
        top = scores.max(axis=-1)
        log_z = np.log(np.exp(scores - top[:, None]).sum(axis=-1)) + top
        nll += log_z - scores[np.arange(blocks), rows[:, t + 1]]
    return float(nll.sum() / (blocks * block))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("models", nargs="+", type=Path, help="exported tinygen model directories")
    p.add_argument("--tokens", type=Path, help="held-out token cache (tinygen-train encode)")
    p.add_argument("--text", type=Path,
                   help="held-out text file: report bits per character (any tokenizers)")
    p.add_argument("--chars", type=int, default=50_000, help="characters of --text scored")
    p.add_argument("--block", type=int, default=256, help="tokens per scored block")
    p.add_argument("--blocks", type=int, default=40, help="blocks scored (one batch)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all)")
    args = p.parse_args(argv)
    if (args.tokens is None) == (args.text is None):
        p.error("give one of --tokens (perplexity) or --text (bits per character)")
    if args.text is not None:
        text = args.text.read_text(encoding="utf-8")[:args.chars]
        print("| model | bits per character |\n|---|---:|")
        for model in args.models:
            value = bits_per_char(model, text, args.block, args.threads)
            print(f"| {model} | {value:.3f} |", flush=True)
        return 0
    from tinygen_trainer.data import load_token_cache

    tokens = np.asarray(load_token_cache(args.tokens).tokens)
    if len(tokens) < args.blocks * args.block + 1:
        p.error(f"{args.tokens} has {len(tokens)} tokens, fewer than --blocks x --block + 1")
    print("| model | perplexity |\n|---|---:|")
    for model in args.models:
        value = perplexity(model, tokens, args.block, args.blocks, args.threads)
        print(f"| {model} | {value:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
