"""tinygen on a GPU (onnxruntime's CUDA execution provider) against transformers on the same GPU.

    python tools/bench/bench_cuda.py                       # print the tables
    python tools/bench/bench_cuda.py --out cuda.md         # also write them as a markdown section
    python tools/bench/bench_cuda.py --record              # append that to docs/benchmarks.md

Needs a CUDA GPU, onnxruntime-gpu, and torch with CUDA. The model is bench_decode.py's
GPT-2-124M shape (random weights, tools/bench/models.py), exported here as our fused
graph in float16 (`tinygen-train export --graph fused --dtype float16`): onnxruntime's
CUDA GroupQueryAttention runs only in float16. tinygen binds the KV buffers on the
GPU (IO binding, updated in place); only the ids go up and the last logits come back
each step, which replays a recorded CUDA graph (tinygen/cuda_graph.py; a second tinygen
engine runs without, for the difference). transformers runs `generate` (use_cache, greedy) with the model on the GPU
in float16 and in float32.

Figures, medians after a warm-up, rounds rotating the engines (bench_decode.measure):
decode tok/s at each batch (prefill excluded: batch x (N - 1) / (t_N - t_1)), time to
first token for each prompt length, and batch-1 ms per token at each context position.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
import models  # noqa: E402  (tools/bench/models.py)
from bench_decode import (DOC, REPO, Engine, Result, _int_list, measure,  # noqa: E402
                          position_table, unmeasured)
from machine import describe  # noqa: E402
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402

BASELINE = "transformers fp16"
WINDOW = 1024  # the GPT-2-124M shape's positions (models.py): prompt + new tokens fit in it


class TinygenCuda(Engine):
    def __init__(self, model_dir: Path, name: str, cuda_graphs: bool = True):
        from tinygen import TextGenerator

        self.name = name
        self.generator = TextGenerator(model_dir, device="cuda", cuda_graphs=cuda_graphs)
        if self.generator.model.cuda_graphs != cuda_graphs:
            raise RuntimeError(f"{name}: CUDA graphs {'off' if cuda_graphs else 'on'}")
        providers = self.generator.model.session.get_providers()
        if providers[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"{name}: onnxruntime runs on {providers}, not CUDA")

    def generate(self, prompt, batch, new_tokens):
        return [len(t) for t in self.tokens(prompt, batch, new_tokens)]

    def tokens(self, prompt, batch, new_tokens) -> list[list[int]]:
        out = self.generator.generate(prompt, n=batch, batch_size=batch, do_sample=False,
                                      max_new_tokens=new_tokens, stop_at_eos=False)
        return [list(c.token_ids) for c in out]


class TransformersCuda(Engine):
    def __init__(self, source_dir: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.name = f"transformers {dtype}"
        torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(source_dir).to("cuda", torch_dtype)
        self.model.eval()

    def generate(self, prompt, batch, new_tokens):
        return [len(t) for t in self.tokens(prompt, batch, new_tokens)]

    def tokens(self, prompt, batch, new_tokens) -> list[list[int]]:
        import torch

        ids = torch.tensor([prompt] * batch, dtype=torch.long, device="cuda")
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=self.model.config.eos_token_id)
        rows = out.cpu()  # waits for the GPU: the time includes every kernel
        return [row[len(prompt):] for row in rows.tolist()]


def greedy_agreement(engines: list[Engine], prompt: list[int], new_tokens: int) -> str:
    """How many greedy tokens each engine shares with transformers fp32 before they part
    (float16 rounding may flip a close token of random weights; a broken graph parts at once)."""
    reference = engines[-1].tokens(prompt, 1, new_tokens)[0]
    parts = []
    for engine in engines[:-1]:
        got = engine.tokens(prompt, 1, new_tokens)[0]
        same = next((i for i, (a, b) in enumerate(zip(got, reference)) if a != b), new_tokens)
        parts.append(f"{engine.name} {same}/{new_tokens}")
    return f"greedy tokens equal to {engines[-1].name} before the first difference: " + \
        ", ".join(parts)


def prompt_of(length: int) -> list[int]:
    """Fixed ordinary ids (never EOS), the same for every engine: bench_decode's prompt."""
    return [(7919 * i + 464) % (models.VOCAB_SIZE - 1) for i in range(length)]


def step_breakdown(engine: TinygenCuda, prompt: list[int], steps: int = 128) -> str:
    """Where a batch-1 token's time goes: onnxruntime's run alone (or replay) and the runtime's
    decode step (inputs written and copied up, logits back as float32); main() adds the whole
    generate loop's (sampling, stop checks, detokenizing) from the decode rate."""
    import numpy as np

    lm = engine.generator.model
    ids = np.array([prompt])
    _, cache = lm.forward(ids, np.ones_like(ids), np.arange(len(prompt))[None], lm.empty_cache(1))
    start = time.perf_counter()
    for i in range(steps):
        _, cache = lm.step(np.array([5]), [len(prompt) + i], None, cache)
    step_ms = (time.perf_counter() - start) / steps * 1000
    graph = cache.graph  # the recorded step, when CUDA graphs are on
    binding, options = (graph.binding, graph.options) if graph else (cache.binding, lm._uncaptured)
    start = time.perf_counter()
    for _ in range(steps):  # the last step's inputs again: the same work, nothing Python adds
        lm.session.run_with_iobinding(binding, options)
    run_ms = (time.perf_counter() - start) / steps * 1000
    return (f"{engine.name} batch-1 ms per token: onnxruntime run {run_ms:.2f}, runtime decode "
            f"step {step_ms:.2f}")


def decode_table(results: list[Result]) -> str:
    base = {r.batch: r.decode_tps for r in results if r.engine == BASELINE}
    lines = [f"| engine | batch | decode tok/s | vs {BASELINE} | TTFT ms (32-token prompt) |",
             "|---|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: r.batch):
        ratio = f"{r.decode_tps / base[r.batch]:.2f}x" if r.batch in base else "n/a"
        lines.append(f"| {r.engine} | {r.batch} | {r.decode_tps:.0f} | {ratio} "
                     f"| {r.t_1 * 1000:.1f} |")
    return "\n".join(lines)


def ttft_table(by_prompt: dict[int, list[Result]]) -> str:
    lengths = sorted(by_prompt)
    lines = ["| engine | " + " | ".join(f"TTFT ms, {n}-token prompt" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for i, r in enumerate(by_prompt[lengths[0]]):
        cells = " | ".join(f"{by_prompt[n][i].t_1 * 1000:.1f}" for n in lengths)
        lines.append(f"| {r.engine} | {cells} |")
    return "\n".join(lines)


def library_versions() -> str:
    """The versions imported (metadata could name another onnxruntime than the one on the path)."""
    import platform

    import onnxruntime
    import torch
    import transformers

    return (f"python {platform.python_version()}, onnxruntime {onnxruntime.__version__} "
            f"({onnxruntime.get_device()}), torch {torch.__version__}, "
            f"transformers {transformers.__version__}")


def gpu_name() -> str:
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB"


def check_cuda() -> None:
    """onnxruntime's CUDA provider and torch's CUDA, before anything is built."""
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        raise ScriptError(f"needs onnxruntime-gpu on a CUDA GPU: this onnxruntime offers only "
                          f"{', '.join(providers)}; install onnxruntime-gpu in place of "
                          f"onnxruntime")
    try:
        import torch
    except ImportError:
        raise ScriptError("needs torch with CUDA for the transformers engines: torch is not "
                          "installed") from None
    if not torch.cuda.is_available():
        raise ScriptError(f"needs torch with CUDA for the transformers engines: torch "
                          f"{torch.__version__} sees no CUDA GPU")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=REPO / "build" / "bench",
                   help="where the benchmark models are built and cached")
    p.add_argument("--new-tokens", type=int, default=128, help="N: tokens generated per row")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per length, after a warm-up")
    p.add_argument("--batches", type=_int_list, default="1,8,32", help="batch sizes")
    p.add_argument("--prompts", type=_int_list, default="32,512", help="prompt lengths for TTFT")
    p.add_argument("--positions", type=_int_list, default="32,1000",
                   help="context positions for the batch-1 cost per token")
    p.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    p.add_argument("--record", action="store_true", help=f"append it to {DOC.relative_to(REPO)}")
    args = p.parse_args(argv)
    if args.new_tokens < 2 or 32 + args.new_tokens > WINDOW:
        p.error(f"--new-tokens must be from 2 (the decode rate is measured past the first token) "
                f"to {WINDOW - 32} (after the 32-token prompt, within the model's {WINDOW} "
                f"positions)")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if max(args.prompts) + 2 > WINDOW:
        p.error(f"--prompts must be at most {WINDOW - 2} tokens (prompt + 2 new within {WINDOW} "
                f"positions)")
    if max(args.positions) + 2 > WINDOW:
        p.error(f"--positions must be at most {WINDOW - 2} (2 new tokens or more within {WINDOW} "
                f"positions)")
    check_cuda()

    started = time.perf_counter()
    root = args.work_dir / "gpt2-124m"
    source = models.build_source(root / "source")
    fused = models.build_fused(source, root / "fused-fp16", dtype="float16")
    engines = [TinygenCuda(fused, "tinygen fp16"),
               TinygenCuda(fused, "tinygen fp16, no CUDA graph", cuda_graphs=False),
               TransformersCuda(source, "fp16"), TransformersCuda(source, "fp32")]

    agreement = greedy_agreement(engines, prompt_of(32), 32)
    print(agreement, flush=True)
    breakdown = "; ".join(step_breakdown(e, prompt_of(32)) for e in engines[:2])
    print(breakdown, flush=True)
    results = []
    for batch in args.batches:
        print(f"batch {batch}", flush=True)
        for r in measure(engines, prompt_of(32), batch, args.new_tokens, args.repeats):
            print(f"  {r.engine}: {r.decode_tps:.0f} tok/s, TTFT {r.t_1 * 1000:.1f} ms "
                  f"(spread {r.spread:.0%})", flush=True)
            results.append(r)
    by_prompt = {n: measure(engines, prompt_of(n), 1, 2, args.repeats) for n in args.prompts}
    by_position = {}
    for position in args.positions:
        new_tokens = min(32, 1024 - position)
        by_position[position] = measure(engines, prompt_of(position), 1, new_tokens, args.repeats)
    elapsed = time.perf_counter() - started

    loops = [f"{r.engine} {1000 / r.decode_tps:.2f}" for r in results if r.batch == 1][:2]
    if loops:
        breakdown += f"; whole generate loop (by the decode rate): {', '.join(loops)}"
    tables = "\n\n".join([decode_table(results), ttft_table(by_prompt),
                          position_table(by_position, digits=2)])
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {stamp}: decode on a GPU, GPT-2-124M shape, random weights\n\n"
               f"- machine: {gpu_name()}; host {describe()}\n"
               f"- libraries: {library_versions()}\n"
               f"- settings: {args.new_tokens} new tokens after a 32-token prompt, greedy, "
               f"{args.repeats} rounds after a warm-up; tinygen runs `--graph fused --dtype "
               f"float16` on onnxruntime's CUDA execution provider with the KV buffers bound on "
               f"the GPU, decode steps replayed as a CUDA graph (and without, in the same run); "
               f"the run took {elapsed / 60:.1f} min\n- {agreement}\n- {breakdown}"
               f"\n\n{tables}\n")
    print(section)
    missing = unmeasured(results + [r for rs in by_position.values() for r in rs])  # TTFT: t_1 only
    if missing:
        print(f"error: t_N was not above t_1 for {'; '.join(missing)} (noise outweighed the "
              f"decoding): no rate, nothing written; raise --new-tokens or --repeats",
              file=sys.stderr)
        return 1
    if args.out:
        args.out.write_text(section, encoding="utf-8")
    if args.record:
        with DOC.open("a", encoding="utf-8") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    run_main(main)
