"""What every worker shares: the JSON-lines protocol with tools/bench/compare.py; standard library.

A worker runs inside its peer's venv (tools/bench/venvs.py), loads one model and
either serves timing requests or does one cold start:

    python peers/<engine>.py --model PATH --threads 2             # serve
    python peers/<engine>.py --model PATH --threads 2 --cold IDS  # cold start, then exit

Serving: after loading it writes {"ready": true, "load_s": ..., "versions": {...}}
and then answers each request line on stdin with one line on stdout:

    {"op": "generate", "prompt": [ids], "batch": B, "new_tokens": N}
        -> {"seconds": wall time of the whole call, "lengths": [new tokens per row],
            "tokens": [row 0's new token ids], "token_at": [seconds into the call at
            which each new token was ready]}
    {"op": "stats"}  -> {"rss_mb": ..., "peak_rss_mb": ..., "cpu_s": ...}

`token_at` comes from the engine's own token loop (or streamer): the step between two
tokens is one decode and one sampling in every engine, so its median is a per-token
cost without the prefill in it, whose run-to-run spread swamps a few dozen tokens.

Cold start (--cold, the prompt ids comma-separated): the worker generates one token
from the prompt, writes {"first_token_at": time.time()} (compare.py subtracts the
time it started the process), then generates --cold-tokens tokens at batch 1 and
writes {"peak_rss_mb": ...}: the process's peak resident memory after loading the
model and decoding a text, warm-ups and all.

Libraries that print to stdout cannot corrupt the protocol: fd 1 is pointed at
stderr before anything is imported, and replies go to a private copy of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from importlib.metadata import PackageNotFoundError, version

_out = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)  # anything a library writes to stdout goes to stderr


def reply(message: dict) -> None:
    _out.write(json.dumps(message) + "\n")
    _out.flush()


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field)) / 1024


def peak_rss_mb() -> float:
    """The high-water mark of this process's resident memory (VmHWM). Not ru_maxrss: exec
    keeps the maxrss of the process that forked us, so a worker started by a 2 GB harness
    would report at least 2 GB."""
    return _status_mb("VmHWM:")


def rss_mb() -> float:
    return _status_mb("VmRSS:")


def versions(*dists: str) -> dict[str, str]:
    found = {}
    for dist in dists:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="model directory (or file) this engine loads")
    p.add_argument("--threads", type=int, default=2, help="threads for the engine's kernels")
    p.add_argument("--cold", default=None, metavar="IDS",
                   help="cold start: comma-separated prompt ids; one token, then --cold-tokens")
    p.add_argument("--cold-tokens", type=int, default=128)
    return p


def run(args: argparse.Namespace, load, dists: tuple[str, ...]) -> None:
    """Load the engine and serve requests or do the cold start, as `args` says.

    `load()` returns generate(prompt, batch, new_tokens, ready) -> rows of new ids, where
    `ready` is a list the engine appends time.perf_counter() to as each new token is ready.
    """
    started = time.perf_counter()
    generate = load()
    if args.cold is not None:
        prompt = [int(t) for t in args.cold.split(",")]
        first = generate(prompt, 1, 1, [])
        reply({"first_token_at": time.time(), "lengths": [len(r) for r in first]})
        rows = generate(prompt, 1, args.cold_tokens, [])
        reply({"peak_rss_mb": peak_rss_mb(), "lengths": [len(r) for r in rows]})
        return
    reply({"ready": True, "load_s": time.perf_counter() - started, "versions": versions(*dists),
           "python": sys.version.split()[0]})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "generate":
            prompt, batch, new = request["prompt"], request["batch"], request["new_tokens"]
            ready: list[float] = []
            start = time.perf_counter()
            rows = generate(prompt, batch, new, ready)
            seconds = time.perf_counter() - start
            reply({"seconds": seconds, "lengths": [len(r) for r in rows],
                   "tokens": [int(t) for t in rows[0]], "token_at": [t - start for t in ready]})
        elif request["op"] == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            reply({"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
                   "cpu_s": usage.ru_utime + usage.ru_stime})
        else:
            reply({"error": f"unknown op {request['op']!r}"})
