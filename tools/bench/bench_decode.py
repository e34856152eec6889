"""Decode speed of tinygen against transformers (torch) and optimum (onnxruntime), same run, same machine.

    .venv/bin/python tools/bench/bench_decode.py                 # print the table
    .venv/bin/python tools/bench/bench_decode.py --int8 --record # also int8, append to docs/benchmarks.md
    .venv/bin/python tools/bench/bench_decode.py --int8 --int4 --roofline --positions 32,1000

The model is GPT-2-124M-shaped with random weights, built once under --work-dir
(tools/bench/models.py). Every engine gets the same prompt (fixed token ids),
the same thread count and greedy decoding, and must produce exactly
--new-tokens tokens per row (EOS ignored), which is checked.

Decode rate excludes the prefill: with t_N the median time to generate N new
tokens and t_1 the median time to generate 1 (same prompt, same batch),
decode tok/s = batch * (N - 1) / (t_N - t_1). TTFT is t_1: prefill of the
prompt plus the first token.

"tinygen" runs optimum's graph (concat KV cache), "tinygen fused" our own graph
(`tinygen-train export --graph fused`: in-place KV cache, last-position logits).
--roofline measures the machine's read bandwidth (tools/bench/bandwidth.py) and
reports, for batch 1, bytes of weights read per token x tok/s as a share of it.
--positions P1,P2 times batch-1 decoding from a prompt of P tokens for each P
(ms per token at context position P) and gives the ratio of the last to the first.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
import bandwidth  # noqa: E402  (tools/bench/bandwidth.py)
import models  # noqa: E402  (tools/bench/models.py: a script folder, not a package)
from machine import describe  # noqa: E402
from script_errors import ArgumentParser, run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
BASELINE = "transformers"
DOC_INTRO = """\
# Benchmarks

Decode speed of the tinygen runtime next to transformers (torch) and optimum
(onnxruntime) on the same machine, in the same run. The model is GPT-2-124M-shaped
(12 layers, 12 heads, 768 dims, vocabulary 50257) with random weights, exported
with optimum (`text-generation-with-past`); speed depends only on the shapes.
Every engine decodes greedily from the same 32-token prompt with the same thread
count and must emit exactly N new tokens. Decode tok/s excludes the prefill:
batch x (N - 1) / (t_N - t_1), medians over repeats after a warm-up; TTFT is
t_1 (prefill plus first token); "vs transformers" divides by transformers' decode
rate at the same batch. How to reproduce: from the repository root, run
`.venv/bin/python tools/bench/bench_decode.py --int8 --record` (the first run
builds and caches the model under `build/bench/`; see `--help` for the flags).
"""


# -- engines ---------------------------------------------------------------------

class Engine:
    """One way of running greedy generation; `generate` returns the new tokens per row."""

    name: str

    def generate(self, prompt: list[int], batch: int, new_tokens: int) -> list[int]:
        raise NotImplementedError


class Tinygen(Engine):
    def __init__(self, model_dir: Path, threads: int, name: str = "tinygen"):
        from tinygen import TextGenerator

        self.name = name
        self.generator = TextGenerator(model_dir, device="cpu", threads=threads)

    def generate(self, prompt, batch, new_tokens):
        out = self.generator.generate(prompt, n=batch, batch_size=batch, do_sample=False,
                                      max_new_tokens=new_tokens, stop_at_eos=False)
        return [len(c.token_ids) for c in out]


class _HFGenerate(Engine):
    """transformers' `generate` loop, shared by the torch model and optimum's ORT model."""

    model = None

    def generate(self, prompt, batch, new_tokens):
        import torch

        ids = torch.tensor([prompt] * batch, dtype=torch.long)
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=True,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                pad_token_id=self.model.config.eos_token_id)
        return [out.shape[1] - len(prompt)] * batch


class Transformers(_HFGenerate):
    name = BASELINE

    def __init__(self, source_dir: Path, threads: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.model = AutoModelForCausalLM.from_pretrained(source_dir).eval()


class Optimum(_HFGenerate):
    def __init__(self, onnx_dir: Path, threads: int, io_binding: bool):
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        torch.set_num_threads(threads)  # the generate loop's own tensor ops
        options = ort.SessionOptions()  # as tinygen's OnnxCausalLM sets them
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        self.name = "optimum (io_binding)" if io_binding else "optimum"
        self.model = ORTModelForCausalLM.from_pretrained(
            onnx_dir, use_cache=True, use_io_binding=io_binding, session_options=options,
            provider="CPUExecutionProvider")


# -- measurement -----------------------------------------------------------------

@dataclass(frozen=True)
class Result:
    engine: str
    batch: int
    t_1: float  # median seconds for 1 new token (prefill + first token)
    t_n: float  # median seconds for N new tokens
    new_tokens: int
    spread: float = 0.0  # (max - min) / median of the t_N runs: how noisy they were

    @property
    def decode_tps(self) -> float:
        """nan where t_N is not above t_1: noise outweighed the decoding, there is no rate."""
        if self.t_n <= self.t_1:
            return float("nan")
        return self.batch * (self.new_tokens - 1) / (self.t_n - self.t_1)


def unmeasured(results: list[Result]) -> list[str]:
    """The results without a decode rate (t_N not above t_1), named for a warning."""
    return [f"{r.engine} at batch {r.batch}, {r.new_tokens} new tokens" for r in results
            if not r.decode_tps > 0]


def _timed(engine: Engine, prompt: list[int], batch: int, new_tokens: int) -> float:
    start = time.perf_counter()
    lengths = engine.generate(prompt, batch, new_tokens)
    elapsed = time.perf_counter() - start
    if lengths != [new_tokens] * batch:  # a short row would flatter the rate
        raise RuntimeError(f"{engine.name}: expected {new_tokens} tokens x {batch} rows, got {lengths}")
    return elapsed


def measure(engines: list[Engine], prompt: list[int], batch: int, new_tokens: int,
            repeats: int) -> list[Result]:
    """One warm-up of each length per engine, then `repeats` rounds; medians of each.

    Every round times each engine once (1 token, then N), rotating which engine
    goes first: on a shared machine a burst of outside load then lands on all
    engines alike instead of on whichever ran during it.
    """
    for engine in engines:
        _timed(engine, prompt, batch, new_tokens)
        _timed(engine, prompt, batch, 1)
    t_1 = {e.name: [] for e in engines}
    t_n = {e.name: [] for e in engines}
    for round_ in range(repeats):
        shift = round_ % len(engines)
        for engine in engines[shift:] + engines[:shift]:
            t_1[engine.name].append(_timed(engine, prompt, batch, 1))
            t_n[engine.name].append(_timed(engine, prompt, batch, new_tokens))
    return [Result(e.name, batch, statistics.median(t_1[e.name]), statistics.median(t_n[e.name]),
                   new_tokens, _spread(t_n[e.name])) for e in engines]


def _spread(times: list[float]) -> float:
    return (max(times) - min(times)) / statistics.median(times)


def load_engines(dirs: dict[str, Path], threads: int, names: list[str]) -> list[Engine]:
    """All engines at once (a few GB for GPT-2-124M), so the rounds can interleave them."""
    table = {
        "tinygen": lambda: Tinygen(dirs["onnx"], threads),
        "tinygen-fused": lambda: Tinygen(dirs["fused"], threads, name="tinygen fused"),
        "transformers": lambda: Transformers(dirs["source"], threads),
        "optimum": lambda: Optimum(dirs["onnx"], threads, io_binding=False),
        "optimum-iobinding": lambda: Optimum(dirs["onnx"], threads, io_binding=True),
        "tinygen-int8": lambda: Tinygen(dirs["int8"], threads, name="tinygen int8"),
        "tinygen-fused-int8": lambda: Tinygen(dirs["fused-int8"], threads,
                                              name="tinygen fused int8"),
        "tinygen-fused-int4": lambda: Tinygen(dirs["fused-int4"], threads,
                                              name="tinygen fused int4"),
    }
    engines = []
    for name in names:
        print(f"loading {name}", flush=True)
        engines.append(table[name]())
    return engines


def _read_bandwidth(threads: int) -> float:
    gbs = bandwidth.read_gbs(threads)
    print(f"read bandwidth: {gbs:.1f} GB/s (median, {threads} threads)", flush=True)
    return gbs


def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (including time stolen by the hypervisor)."""
    with open("/proc/stat", encoding="utf-8") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class OutsideLoad:
    """Share of the machine's CPUs used by *other* processes while timing (0 = a quiet machine).

    Load average would count this process too; /proc/stat minus our own CPU time does not.
    """

    def __enter__(self) -> "OutsideLoad":
        self.share = float("nan")
        try:
            self._start = (time.perf_counter(), _busy_cpu_seconds(), time.process_time())
        except (OSError, ValueError):  # no /proc (not Linux): report nothing
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is not None:
            wall, busy, own = self._start
            wall, busy, own = time.perf_counter() - wall, _busy_cpu_seconds() - busy, \
                time.process_time() - own
            self.share = max(0.0, busy - own) / (wall * os.cpu_count())


# -- roofline --------------------------------------------------------------------

# engine -> the model directory whose weights it reads (transformers and optimum read
# the same float32 weights as the optimum export)
ENGINE_DIRS = {"tinygen": "onnx", "tinygen-fused": "fused", "transformers": "onnx",
               "optimum": "onnx", "optimum-iobinding": "onnx", "tinygen-int8": "int8",
               "tinygen-fused-int8": "fused-int8", "tinygen-fused-int4": "fused-int4"}


def weight_bytes_per_token(onnx_path: Path) -> int:
    """Bytes of weights one batch-1 decode step reads: every initializer, except that a
    table read only by Gather (a token or position embedding) costs one row."""
    import numpy as np
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    total = 0
    for init in graph.initializer:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        size = int(np.prod(init.dims)) * itemsize
        used = users.get(init.name, [])
        if used and all(n.op_type == "Gather" and n.input[0] == init.name for n in used):
            axis = next((a.i for a in used[0].attribute if a.name == "axis"), 0)
            size //= init.dims[axis]  # one row (or column) per token
        total += size
    return total


def roofline_shares(results: list[Result], dirs: dict[str, Path], names: list[str],
                    read_gbs: float) -> dict[str, float]:
    """Display name -> batch-1 bytes of weights read per second, as a share of `read_gbs`."""
    batch1 = [r for r in results if r.batch == 1]
    shares = {}
    for r, name in zip(batch1, names):  # measure() keeps the engines' order
        if ENGINE_DIRS.get(name) in dirs:
            per_token = weight_bytes_per_token(dirs[ENGINE_DIRS[name]] / "model.onnx")
            shares[r.engine] = per_token * r.decode_tps / (read_gbs * 1e9)
    return shares


# -- report ----------------------------------------------------------------------

def markdown_table(results: list[Result], roofline: dict[str, float] | None = None) -> str:
    base = {r.batch: r.decode_tps for r in results if r.engine == BASELINE}
    optimum = {r.batch: r.decode_tps for r in results if r.engine == "optimum"}
    extra = " roofline |" if roofline else ""
    lines = ["| engine | batch | decode tok/s | vs transformers | vs optimum | TTFT ms |" + extra,
             "|---|---:|---:|---:|---:|---:|" + ("---:|" if roofline else "")]
    for r in sorted(results, key=lambda r: r.batch):  # stable: engine order kept per batch
        ratio = f"{r.decode_tps / base[r.batch]:.2f}x" if r.batch in base else "n/a"
        vs_optimum = f"{r.decode_tps / optimum[r.batch]:.2f}x" if r.batch in optimum else "n/a"
        line = (f"| {r.engine} | {r.batch} | {r.decode_tps:.1f} | {ratio} | {vs_optimum} "
                f"| {r.t_1 * 1000:.0f} |")
        if roofline:  # batch 1 only: larger batches read each weight once for several tokens
            share = roofline.get(r.engine) if r.batch == 1 else None
            line += f" {share:.0%} |" if share is not None else " |"
        lines.append(line)
    return "\n".join(lines)


def position_table(by_position: dict[int, list[Result]], digits: int = 1) -> str:
    """Batch-1 ms per generated token from a prompt of P tokens, for each P; last / first
    (`digits` after the point: a GPU's tokens take under a millisecond)."""
    positions = sorted(by_position)
    first, last = positions[0], positions[-1]
    header = " | ".join(f"ms/token at {p}" for p in positions)
    lines = [f"| engine | {header} | {last} / {first} |",
             "|---|" + "---:|" * (len(positions) + 1)]
    for i, r in enumerate(by_position[first]):
        ms = [1000 / by_position[p][i].decode_tps for p in positions]
        cells = " | ".join(f"{v:.{digits}f}" for v in ms)
        lines.append(f"| {r.engine} | {cells} | {ms[-1] / ms[0]:.2f} |")
    return "\n".join(lines)


def library_versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("tinygen", "onnxruntime", "torch", "transformers", "optimum", "optimum-onnx",
                 "numpy", "tokenizers"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def record(table: str, args: argparse.Namespace, elapsed: float, outside: float) -> None:
    if not DOC.is_file():
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(DOC_INTRO, encoding="utf-8")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"\n## {stamp}: decode, GPT-2-124M shape, random weights, CPU\n\n"
        f"- machine: {describe()}\n"
        f"- libraries: {library_versions()}\n"
        f"- settings: prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
        f"{args.repeats} repeats after 1 warm-up, {args.threads} threads for every engine, greedy; "
        f"the run took {elapsed / 60:.1f} min; other processes used {outside:.0%} of the CPUs "
        f"while timing\n"
        + ("- tinygen int8: the same export with int8 weights (onnxruntime `quantize_dynamic`, "
           "QInt8); its ratio is against fp32 transformers\n" if args.int8 else "")
        + ("- tinygen fused: `tinygen-train export --graph fused` (in-place KV cache, "
           "last-position logits); fused int8 / int4: its `--quantize int8` (dynamic, QUInt8 per "
           "channel) and `--quantize int4` (MatMulNBits, block 32)\n"
           if "tinygen-fused" in args.engines else "")
        + f"\n{table}\n"
    )
    with DOC.open("a", encoding="utf-8") as f:
        f.write(section)
    print(f"appended to {DOC.relative_to(REPO)}")


# -- command line ----------------------------------------------------------------

ENGINES = ("tinygen", "tinygen-fused", "transformers", "optimum", "optimum-iobinding")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got '{text}'")
    return values


def _name_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"engines are {', '.join(ENGINES)}; got '{text}'")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-dir", type=Path, default=REPO / "build" / "bench",
                   help="where the benchmark models are built and cached")
    p.add_argument("--new-tokens", type=int, default=64, help="N: tokens generated per row")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length (fixed token ids)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per length, after 1 warm-up")
    p.add_argument("--batches", type=_int_list, default="1,8", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="intra-op threads for every engine; the default is all cores")
    p.add_argument("--engines", type=_name_list, default=",".join(ENGINES),
                   help="comma-separated subset of: " + ", ".join(ENGINES))
    p.add_argument("--int8", action="store_true",
                   help="also tinygen on an int8 dynamic-quantized copy of the export (and on the "
                        "fused graph's int8 export when tinygen-fused runs)")
    p.add_argument("--int4", action="store_true",
                   help="also tinygen on the fused graph's int4 export")
    p.add_argument("--roofline", action="store_true",
                   help="measure read bandwidth and report batch-1 speed as a share of it")
    p.add_argument("--positions", type=_int_list, default=None,
                   help="also time batch-1 decoding from prompts of these lengths, e.g. 32,1000")
    p.add_argument("--record", action="store_true", help=f"append the table to {DOC.relative_to(REPO)}")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2 (the decode rate is measured past the first token)")
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    if args.prompt_tokens < 1 or args.prompt_tokens + args.new_tokens > 1024:
        parser.error("--prompt-tokens must be >= 1, and prompt + new tokens at most 1024 positions")

    if any(p < 1 or p + 2 > 1024 for p in args.positions or []):
        parser.error("--positions must be between 1 and 1022")
    fused = "tinygen-fused" in args.engines
    names = args.engines + (["tinygen-int8"] if args.int8 else []) \
        + (["tinygen-fused-int8"] if args.int8 and fused else []) \
        + (["tinygen-fused-int4"] if args.int4 else [])
    if args.record and BASELINE not in names:
        parser.error("--record needs the transformers engine (the table's ratios are against it)")
    if args.roofline:
        bandwidth.check_fits(bandwidth.ROOFLINE_MB)  # _read_bandwidth's arrays

    started = time.perf_counter()
    print(f"building or reusing the model under {args.work_dir} ...", flush=True)
    dirs = models.gpt2_124m(args.work_dir, int8=args.int8, fused=fused, int4=args.int4)
    # A fixed prompt of ordinary ids (never EOS), the same for every engine and batch row.
    prompt = [(7919 * i + 464) % (models.VOCAB_SIZE - 1) for i in range(args.prompt_tokens)]

    engines = load_engines(dirs, args.threads, names)
    results = []
    by_position: dict[int, list[Result]] = {}
    read_gbs = None
    with OutsideLoad() as outside:
        if args.roofline:
            read_gbs = _read_bandwidth(args.threads)
        for batch in args.batches:
            print(f"batch {batch}: {args.repeats} rounds of {len(engines)} engines", flush=True)
            for r in measure(engines, prompt, batch, args.new_tokens, args.repeats):
                print(f"  {r.engine}: {r.decode_tps:.1f} tok/s decode, TTFT {r.t_1 * 1000:.0f} ms, "
                      f"t_N {r.t_n:.2f} s (runs spread {r.spread:.0%})", flush=True)
                results.append(r)
        for position in args.positions or []:
            new_tokens = min(args.new_tokens, 1024 - position)
            at = [(7919 * i + 464) % (models.VOCAB_SIZE - 1) for i in range(position)]
            print(f"position {position}: {args.repeats} rounds, batch 1, {new_tokens} new tokens",
                  flush=True)
            by_position[position] = measure(engines, at, 1, new_tokens, args.repeats)
            for r in by_position[position]:
                print(f"  {r.engine}: {1000 / r.decode_tps:.1f} ms/token", flush=True)
        if args.roofline:
            # before and after the timings: outside load drifts
            read_gbs = (read_gbs + _read_bandwidth(args.threads)) / 2

    elapsed = time.perf_counter() - started
    roofline = roofline_shares(results, dirs, names, read_gbs) if read_gbs else None
    table = markdown_table(results, roofline)
    if by_position:
        table += "\n\n" + position_table(by_position)
    if read_gbs:
        table += (f"\n\nroofline: bytes of weights read per token x batch-1 tok/s, over the read "
                  f"bandwidth measured in this run ({read_gbs:.1f} GB/s, tools/bench/bandwidth.py, "
                  f"median of the runs before and after timing)")
    print()
    print(table)
    print(f"\n{describe()}\n{library_versions()}\nthreads {args.threads}, took {elapsed:.0f} s, "
          f"other processes used {outside.share:.0%} of the CPUs while timing")
    if outside.share > 0.05:
        print("warning: other processes shared the CPUs; the numbers are noisy", file=sys.stderr)
    missing = unmeasured(results + [r for rs in by_position.values() for r in rs])
    if missing:
        print(f"error: t_N was not above t_1 for {'; '.join(missing)} (noise outweighed the "
              f"decoding): no rate{', nothing recorded' if args.record else ''}; raise "
              f"--new-tokens or --repeats", file=sys.stderr)
        return 1
    if args.record:
        record(table, args, elapsed, outside.share)
    return 0


if __name__ == "__main__":
    run_main(main)
