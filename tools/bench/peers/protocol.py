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

A request it cannot serve (not a JSON object, an unknown op, a batch or token count
below 1, or an engine that raises; the traceback goes to stderr, the worker's log) is
answered {"error": "what was wrong"}, and the worker waits for the next.

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
import traceback
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids, got '{text}'") \
            from None
    if any(t < 0 for t in ids):
        raise argparse.ArgumentTypeError("token ids must be >= 0")
    return ids


def parser(description: str) -> argparse.ArgumentParser:
    # Plain argparse: workers run in their peer's venv, without tinygen's script_errors.
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="model directory (or file) this engine loads")
    p.add_argument("--threads", type=_positive, default=2,
                   help="threads for the engine's kernels")
    p.add_argument("--cold", type=_ids, default=None, metavar="IDS",
                   help="cold start: comma-separated prompt ids; one token, then --cold-tokens")
    p.add_argument("--cold-tokens", type=_positive, default=128)
    return p


def _request_error(request) -> str | None:
    """What is wrong with a request, or None."""
    if not isinstance(request, dict):
        return "a request is a JSON object"
    if request.get("op") == "generate":
        prompt, batch, new = (request.get(k) for k in ("prompt", "batch", "new_tokens"))
        if not (isinstance(prompt, list) and prompt
                and all(isinstance(t, int) and t >= 0 for t in prompt)):
            return "generate: prompt must be a non-empty list of token ids"
        for name, value in (("batch", batch), ("new_tokens", new)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                return f"generate: {name} must be a whole number >= 1, got {value!r}"
    elif request.get("op") != "stats":
        return f"unknown op {request.get('op')!r}"
    return None


def run(args: argparse.Namespace, load, dists: tuple[str, ...]) -> None:
    """Load the engine and serve requests or do the cold start, as `args` says.

    `load()` returns generate(prompt, batch, new_tokens, ready) -> rows of new ids, where
    `ready` is a list the engine appends time.perf_counter() to as each new token is ready.
    """
    started = time.perf_counter()
    generate = load()
    if args.cold is not None:
        prompt = args.cold
        first = generate(prompt, 1, 1, [])
        reply({"first_token_at": time.time(), "lengths": [len(r) for r in first]})
        rows = generate(prompt, 1, args.cold_tokens, [])
        reply({"peak_rss_mb": peak_rss_mb(), "lengths": [len(r) for r in rows]})
        return
    reply({"ready": True, "load_s": time.perf_counter() - started, "versions": versions(*dists),
           "python": sys.version.split()[0]})
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            reply({"error": f"not a JSON line: {line.strip()[:80]!r}"})
            continue
        wrong = _request_error(request)
        if wrong:
            reply({"error": wrong})
        elif request["op"] == "generate":
            prompt, batch, new = request["prompt"], request["batch"], request["new_tokens"]
            ready: list[float] = []
            start = time.perf_counter()
            try:
                rows = generate(prompt, batch, new, ready)
            except Exception as exc:  # the engine refused the request: say so, keep serving
                traceback.print_exc()
                reply({"error": f"generate failed: {type(exc).__name__}: {exc}"})
                continue
            seconds = time.perf_counter() - start
            reply({"seconds": seconds, "lengths": [len(r) for r in rows],
                   "tokens": [int(t) for t in rows[0]], "token_at": [t - start for t in ready]})
        else:  # stats
            usage = resource.getrusage(resource.RUSAGE_SELF)
            reply({"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb(),
                   "cpu_s": usage.ru_utime + usage.ru_stime})
