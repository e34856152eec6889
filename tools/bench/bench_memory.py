"""The memory a model holds in a process that loads it and generates: what an app embedding tinygen pays.

    .venv/bin/python tools/bench/bench_memory.py                         # the embedded tiny model
    .venv/bin/python tools/bench/bench_memory.py DIR [DIR ...] --runs 5 --record

Each run is a fresh process (the interpreter running this script, with its environment,
so PYTHONPATH picks the tinygen under test) that imports tinygen, loads the model
(TextGenerator, CPU) and generates --new-tokens greedy tokens. It reports, in MB, the
resident memory after the imports, after the load and after generating, the peak over
the process (VmHWM, the figure compare.py's "peak RSS" column gives), and how much of
the anonymous memory sits in huge pages. Medians over --runs processes: where a
process's memory lands can differ from one to the next for the same code.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from bench_decode import DOC, REPO  # noqa: E402
from machine import describe  # noqa: E402
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402

CHILD = r"""
import json, sys
from pathlib import Path

def status():
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    mb = lambda key: int(fields[key].split()[0]) / 1024
    huge = next((int(line.split()[1]) / 1024 for line in open("/proc/self/smaps_rollup")
                 if line.startswith("AnonHugePages:")), 0.0)
    return {"rss": mb("VmRSS"), "peak": mb("VmHWM"), "huge": huge}

from tinygen import TextGenerator
imported = status()
generator = TextGenerator(sys.argv[1] or None, device="cpu", threads=int(sys.argv[3]) or None)
loaded = status()
generator.generate("Once upon a time", max_new_tokens=int(sys.argv[2]), do_sample=False,
                   stop_at_eos=False)
done = status()
print(json.dumps({"imports": imported["rss"], "loaded": loaded["rss"], "generated": done["rss"],
                  "peak": done["peak"], "huge": done["huge"]}))
"""
COLUMNS = ("imports", "loaded", "generated", "peak", "huge")


def measure(model: str, new_tokens: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, model, str(new_tokens), str(threads)],
                          capture_output=True, text=True)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScriptError(f"{model or 'the embedded model'}: the measuring process failed: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="*", type=Path, help="exported model directories "
                   "(default: the embedded tiny model)")
    p.add_argument("--runs", type=int, default=3, help="fresh processes per model (default: 3)")
    p.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: all)")
    p.add_argument("--record", action="store_true", help=f"append the table to {DOC.relative_to(REPO)}")
    args = p.parse_args()
    if not sys.platform.startswith("linux"):
        raise ScriptError("bench_memory reads /proc: it runs on Linux only")
    if args.runs < 1 or args.new_tokens < 1:
        raise ScriptError("--runs and --new-tokens must be >= 1")
    for model in args.models:
        if not (model / "tinygen.json").is_file():
            raise ScriptError(f"{model}: not a tinygen model directory (no tinygen.json)")
    lines = ["| model | after imports | after load | after generating | peak | in huge pages |",
             "|---|---:|---:|---:|---:|---:|"]
    for model in args.models or [None]:
        runs = [measure(str(model or ""), args.new_tokens, args.threads) for _ in range(args.runs)]
        medians = [statistics.median(r[c] for r in runs) for c in COLUMNS]
        spread = f" ({min(r['generated'] for r in runs):.0f}-{max(r['generated'] for r in runs):.0f})" \
            if args.runs > 1 else ""
        cells = [f"{m:.0f}" for m in medians]
        cells[2] += spread
        lines.append(f"| {model or 'embedded tiny model'} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        with DOC.open("a", encoding="utf-8") as f:
            f.write(f"\n## {stamp}: memory held (tools/bench/bench_memory.py)\n\n"
                    f"- machine: {describe()}\n- MB, medians of {args.runs} fresh processes "
                    f"(after generating: range over them); {args.new_tokens} greedy tokens\n\n"
                    f"{table}\n")
        print(f"appended to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main)
