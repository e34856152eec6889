"""What an attention mask costs line-by-line training: a step on padded rows, with and without.

    .venv/bin/python tools/bench/bench_padded_rows.py

Line-by-line rows are records padded after their text to the block. Training used to
pass the model their attention mask; it no longer does (Trainer.host_batch: causal
attention already keeps the text from the padding after it, and the padding's
predictions have no labels), so the attention takes its causal path. This times one
forward and backward of a batch of padded rows both ways, in turns in one process, on
the cpu-small (GPT-2) and cpu-llama presets' shapes, and checks the two losses agree.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, run_main  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="padded rows per step")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per row")
    parser.add_argument("--repeats", type=int, default=9, help="timed steps each way")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    for name in ("batch_size", "block_size", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.block_size < 8:
        parser.error(f"--block-size must be >= 8 (rows padded after some text), got {args.block_size}")
    import torch
    from transformers import AutoModelForCausalLM

    from tinygen_trainer.training.presets import PRESETS

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    b, t = args.batch_size, args.block_size
    ids = torch.randint(0, 1000, (b, t))
    mask = torch.ones(b, t, dtype=torch.long)
    for row in range(b):  # texts from an eighth of the block to all of it
        mask[row, t // 8 + (row * 7919) % (t - t // 8 + 1):] = 0
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    print(f"| preset | ms a step, mask | ms a step, no mask | ratio | loss difference |\n"
          f"|---|---:|---:|---:|---:|")
    for preset in ("cpu-small", "cpu-llama"):
        config = PRESETS[preset].build_config(vocab_size=1000, eos_id=0)
        model = AutoModelForCausalLM.from_config(config)
        model.train()
        times, losses = {True: [], False: []}, {}
        for i in range(args.repeats + 1):  # the first of each: warm-up
            for masked in (True, False):
                start = time.perf_counter()
                loss = model(input_ids=ids, attention_mask=mask if masked else None,
                             labels=labels, use_cache=False).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
                if i:
                    times[masked].append(time.perf_counter() - start)
                losses[masked] = loss.item()
        with_mask, without = (statistics.median(times[m]) * 1e3 for m in (True, False))
        print(f"| {preset} | {with_mask:,.0f} | {without:,.0f} | {with_mask / without:.2f}x | "
              f"{abs(losses[True] - losses[False]):.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
