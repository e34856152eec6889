"""Held-out perplexity of exported models through the tinygen runtime: what quantization costs.

    .venv/bin/python tools/bench/perplexity.py MODEL_DIR [MODEL_DIR ...] \
        --tokens build/tinymodel-distill/holdout.tokens [--block 256] [--blocks 40]

perplexity = exp(mean next-token negative log-likelihood) over `blocks` consecutive
blocks of `block` held-out tokens, each block scored from an empty cache. The
tokens are fed one at a time, all blocks as one batch, and only the last
position's logits are read, so fused graphs (which compute nothing else) and
optimum's graphs are scored by the same code path the decode loop uses.

Models with different tokenizers compare in bits per character instead (`--text`): the
same held-out characters, encoded by each model's own tokenizer, scored the same way
(tools/tinymodel/build.py writes both: build/tinymodel-distill/holdout.tokens and
build/tinymodel-distill/corpus/holdout.txt).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402


def perplexity(model_dir: Path, tokens: np.ndarray, block: int, blocks: int,
               threads: int | None) -> float:
    return float(np.exp(mean_nll(model_dir, tokens, block, blocks, threads)))


def bits_per_char(model_dir: Path, text: str, block: int, threads: int | None) -> float:
    """Mean bits per character of `text` under the model, through its own tokenizer.

    The text is cut into whole blocks of `block` predicted tokens; the mean loss per predicted
    token is scaled by the tokenizer's tokens per character over the whole text.
    """
    return _bits_per_char(model_dir, text_tokens(model_dir, text, block), len(text), block, threads)


def _bits_per_char(model_dir: Path, tokens: np.ndarray, chars: int, block: int,
                   threads: int | None) -> float:
    nats = mean_nll(model_dir, tokens, block, (len(tokens) - 1) // block, threads)
    return nats / np.log(2) * len(tokens) / chars


def text_tokens(model_dir: Path, text: str, block: int) -> np.ndarray:
    """`text` through the model's tokenizer; refused if shorter than a block and the next token."""
    from tinygen.manifest import load_manifest
    from tinygen.tokenizer import TextTokenizer

    manifest = load_manifest(model_dir)
    tokens = np.asarray(TextTokenizer(model_dir / manifest.tokenizer_file).encode(text))
    if len(tokens) < block + 1:
        raise ScriptError(f"the text is {len(tokens)} tokens for {model_dir}, shorter than one "
                          f"block of {block} + 1: give a longer --text, more --chars or a smaller "
                          f"--block")
    return tokens


def check_model(model_dir: Path, block: int) -> None:
    """A tinygen model folder whose window holds a block."""
    from tinygen.manifest import load_manifest

    window = load_manifest(model_dir).context_window
    if block >= window:
        raise ScriptError(f"--block must be below the model's window ({window} for {model_dir})")


def mean_nll(model_dir: Path, tokens: np.ndarray, block: int, blocks: int,
             threads: int | None) -> float:
    from tinygen.manifest import load_manifest
    from tinygen.onnx_model import load_causal_lm

    check_model(model_dir, block)
    manifest = load_manifest(model_dir)
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


def check_same_tokenizer(model_dir: Path, path: Path, header: dict) -> None:
    """The cache's ids must be this model's tokens: encoded with its tokenizer and replacement
    rules (the fingerprints `tinygen-train encode` records). Otherwise the score is noise, or
    an id past the model's vocabulary."""
    from tinygen.manifest import load_manifest
    from tinygen.replacements import Replacements
    from tinygen_trainer.data import Encoder, load_tokenizer

    manifest = load_manifest(model_dir)
    rules = Replacements.load(model_dir / manifest.replacements_file) \
        if manifest.replacements_file else Replacements()
    # The end-of-text id plays no part in the fingerprints.
    encoder = Encoder(load_tokenizer(model_dir / manifest.tokenizer_file), 0, rules)
    if (header.get("tokenizer_sha256"), header.get("replacements_sha256")) != \
            (encoder.fingerprint, encoder.replacements_fingerprint):
        raise ScriptError(f"{path} was encoded with another tokenizer or other replacement rules "
                          f"than {model_dir}'s: encode the held-out text with `tinygen-train encode "
                          f"--tokenizer {model_dir / manifest.tokenizer_file}`, or compare models "
                          f"of different tokenizers with --text")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path, help="exported tinygen model directories")
    p.add_argument("--tokens", type=Path, help="held-out token cache (tinygen-train encode)")
    p.add_argument("--text", type=Path,
                   help="held-out text file: report bits per character (any tokenizers)")
    p.add_argument("--chars", type=int, default=50_000, help="characters of --text scored")
    p.add_argument("--block", type=int, default=256, help="tokens per scored block")
    p.add_argument("--blocks", type=int, default=40, help="blocks scored (one batch)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: all cores)")
    args = p.parse_args(argv)
    if (args.tokens is None) == (args.text is None):
        p.error("give one of --tokens (perplexity) or --text (bits per character)")
    for name in ("chars", "block", "blocks", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    # Every input is checked before the table starts: the held-out data, then each model.
    if args.text is not None:
        try:
            text = args.text.read_text(encoding="utf-8")[:args.chars]
        except UnicodeDecodeError:
            raise ScriptError(f"--text {args.text} is not UTF-8 text") from None
        for model in args.models:
            check_model(model, args.block)
        tokens = {model: text_tokens(model, text, args.block) for model in args.models}
        print("| model | bits per character |\n|---|---:|")
        for model in args.models:
            value = _bits_per_char(model, tokens[model], len(text), args.block, args.threads)
            print(f"| {model} | {value:.3f} |", flush=True)
        return 0
    from tinygen_trainer.data import load_token_cache

    cache = load_token_cache(args.tokens)
    tokens = np.asarray(cache.tokens)
    if len(tokens) < args.blocks * args.block + 1:
        p.error(f"{args.tokens} has {len(tokens)} tokens, fewer than --blocks x --block + 1 "
                f"({args.blocks * args.block + 1})")
    for model in args.models:
        check_model(model, args.block)
        check_same_tokenizer(model, args.tokens, cache.header)
    print("| model | perplexity |\n|---|---:|")
    for model in args.models:
        value = perplexity(model, tokens, args.block, args.blocks, args.threads)
        print(f"| {model} | {value:.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
