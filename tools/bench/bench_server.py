"""Load test of `tinygen serve`: concurrent streaming clients on loopback, for a bounded time.

    .venv/bin/python tools/bench/bench_server.py --clients 16 --duration 30     # load test
    .venv/bin/python tools/bench/bench_server.py --compare 16 --record          # 16 at once vs one by one
    .venv/bin/python tools/bench/bench_server.py --url http://127.0.0.1:8000 --model-id NAME ...

Without --url it starts `tinygen serve` in a subprocess on a free loopback port
(--model; by default the GPT-2-124M-shaped benchmark model that tools/bench/models.py
builds under build/bench/) and stops it at the end. Only loopback addresses are used.

Load test: every client sends a streaming /v1/completions request, reads its
server-sent events up to [DONE], and sends the next, until --duration is over; requests
in flight then finish. Each request ends as one of
  completed  [DONE] after every choice's finish_reason,
  error      an HTTP error status or an error event (counted by status and message),
  hung       no byte for --stall seconds, or not done --request-timeout s after it began.
The report: completion tokens/s and requests/s over the whole run, time to first token
and request latency (p50, p99), the outcomes, and the server's decode-step counters.
The exit status is 1 if any request hung or failed. Also reported: the share of the CPUs
other processes used while measuring; with --url the server is one of them (this script
cannot tell its CPU time apart), and the report says so.

--compare N: the same N requests (fixed prompt, seeds S..S+N-1) one after another on one
client, then all N at once; reports both throughputs, their ratio, and checks that
every text is the same both ways (a seed gives its text whatever the batch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from machine import describe  # noqa: E402  (tools/bench/machine.py)
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "benchmarks.md"
PROMPT = "Once upon a time there was a little model that wanted to write"
NOTES = ("tokens/s: completion tokens of every completed request over the run's wall time; latency: "
         "from sending a request to its [DONE]; first text: to the first chunk with text, which can "
         "be several tokens in when tokens are parts of characters (as in the synthetic vocabulary); "
         "sequences per step: the server's tokens / decode steps during the run. Every request is "
         "counted as completed, error (HTTP status or error event) or hung (no byte for --stall s).")


# -- one streaming request over a plain socket --------------------------------------

@dataclass
class Result:
    outcome: str  # "completed", "error" or "hung"
    started: float
    ended: float
    first_token: float | None = None
    completion_tokens: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    error: str = ""

    @property
    def latency(self) -> float:
        return self.ended - self.started


class Stalled(Exception):
    pass


async def stream_completion(host: str, port: int, body: dict, api_key: str | None, stall: float,
                            timeout: float) -> Result:
    """POST a streaming completion and read it to the end; never raises, never waits forever."""
    started = time.perf_counter()
    result = Result("hung", started, started)
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), stall)
            payload = json.dumps(body).encode()
            auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
            writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                         f"{auth}Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()
            status, headers = await _read_head(reader, stall)
            if status != 200:
                raw = await _read_body(reader, headers, stall)
                try:
                    message = json.loads(raw)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = raw[:200].decode("utf-8", "replace")
                result.outcome, result.error = "error", f"HTTP {status}: {message}"
                return result
            await _read_events(reader, headers, stall, result)
    except (Stalled, TimeoutError):
        result.outcome = "hung"
    except (OSError, ValueError) as exc:
        result.outcome, result.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        result.ended = time.perf_counter()
        if writer is not None:
            writer.close()
    return result


async def _line(reader: asyncio.StreamReader, stall: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readline(), stall)
    except TimeoutError:
        raise Stalled() from None


async def _read_head(reader, stall) -> tuple[int, dict]:
    status = int((await _line(reader, stall)).split()[1])
    headers = {}
    while (line := await _line(reader, stall)) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _chunks(reader, headers, stall):
    """The body's pieces, undoing chunked transfer encoding."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await _line(reader, stall)).split(b";")[0], 16)
            if size == 0:
                return
            try:
                data = await asyncio.wait_for(reader.readexactly(size + 2), stall)
            except TimeoutError:
                raise Stalled() from None
            yield data[:-2]
    elif "content-length" in headers:
        yield await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), stall)
    else:
        while data := await asyncio.wait_for(reader.read(65536), stall):
            yield data


async def _read_body(reader, headers, stall) -> bytes:
    return b"".join([chunk async for chunk in _chunks(reader, headers, stall)])


async def _read_events(reader, headers, stall, result: Result) -> None:
    buffer, finished, done = b"", set(), False
    async for chunk in _chunks(reader, headers, stall):
        buffer += chunk
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            data = event.decode("utf-8").removeprefix("data: ")
            if data == "[DONE]":
                done = True
                continue
            message = json.loads(data)
            if "error" in message:
                result.outcome, result.error = "error", f"error event: {message['error'].get('message')}"
                return
            for choice in message["choices"]:
                if choice["text"] and result.first_token is None:
                    result.first_token = time.perf_counter() - result.started
                result.texts[choice["index"]] = result.texts.get(choice["index"], "") + choice["text"]
                if choice.get("finish_reason"):
                    finished.add(choice["index"])
            if message.get("usage"):
                result.completion_tokens = message["usage"]["completion_tokens"]
    if done and finished:
        result.outcome = "completed"
    else:
        result.outcome, result.error = "error", "the stream ended before [DONE]"


# -- the runs -------------------------------------------------------------------------

@dataclass
class Target:
    host: str
    port: int
    model_id: str
    api_key: str | None


def request_body(target: Target, args, seed: int) -> dict:
    return {"model": target.model_id, "prompt": args.prompt, "max_tokens": args.max_tokens, "seed": seed,
            "temperature": args.temperature, "stream": True, "stream_options": {"include_usage": True}}


async def load_test(target: Target, args) -> tuple[list[Result], float]:
    """--clients clients, each sending requests back to back until --duration is over."""
    start = time.perf_counter()
    stop_at = start + args.duration
    results: list[Result] = []

    async def client(number: int) -> None:
        sent = 0
        while time.perf_counter() < stop_at:
            body = request_body(target, args, args.seed + number * 100_000 + sent)
            results.append(await stream_completion(target.host, target.port, body, target.api_key,
                                                   args.stall, args.request_timeout))
            sent += 1

    await asyncio.gather(*(client(i) for i in range(args.clients)))
    return results, time.perf_counter() - start


async def compare(target: Target, args) -> dict[str, tuple[list[Result], float, dict]]:
    """The same requests one by one, then all at once: (results, wall seconds, server counters) each."""
    bodies = [request_body(target, args, args.seed + i) for i in range(args.compare)]

    async def one(body):
        return await stream_completion(target.host, target.port, body, target.api_key, args.stall,
                                       args.request_timeout)

    async def sequential():
        return [await one(b) for b in bodies]

    async def concurrent():
        return list(await asyncio.gather(*(one(b) for b in bodies)))

    runs = {}
    for name, run in (("sequential", sequential), ("concurrent", concurrent)):
        before, start = server_stats(target), time.perf_counter()
        results = await run()
        runs[name] = (results, time.perf_counter() - start, stats_delta(before, server_stats(target)))
    return runs


# -- the server -----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(host: str, port: int, path: str, api_key: str | None = None, timeout: float = 5) -> dict:
    with socket.create_connection((host, port), timeout=timeout) as s:
        auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        raise ValueError("unexpected chunked reply")
    return json.loads(body)


def server_stats(target: Target) -> dict:
    return get_json(target.host, target.port, "/health").get("stats", {})


def stats_delta(before: dict, after: dict) -> dict:
    delta = {k: after[k] - before.get(k, 0) for k in ("steps", "tokens") if k in after}
    delta["busiest_step"] = after.get("busiest_step", 0)
    return delta


def start_server(args, log_path: Path) -> tuple[subprocess.Popen, Target]:
    port = free_port()
    command = [sys.executable, "-m", "tinygen.cli", "serve", "--model", str(args.model), "--host", "127.0.0.1",
               "--port", str(port), "--max-batch", str(args.max_batch), "--max-waiting", str(args.max_waiting)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}; see {log_path}")
        try:
            health = get_json("127.0.0.1", port, "/health", timeout=1)
            return process, Target("127.0.0.1", port, health["model"], None)
        except (OSError, ValueError):
            time.sleep(0.2)
    stop_server(process)
    raise SystemExit(f"the server did not answer within {args.startup_timeout} s; see {log_path}")


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- outside load -----------------------------------------------------------------------

def _busy_cpu_seconds() -> float:
    """CPU seconds all processes have used since boot (time stolen by the hypervisor included)."""
    with open("/proc/stat", encoding="utf-8") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _process_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class OutsideLoad:
    """Share of the CPUs used by processes other than this one and the server while measuring."""

    def __init__(self, server_pid: int | None):
        self.server_pid, self.share = server_pid, float("nan")

    def _own(self) -> float:
        own = time.process_time()
        return own + (_process_cpu_seconds(self.server_pid) if self.server_pid else 0.0)

    def __enter__(self) -> "OutsideLoad":
        try:
            self._start = (time.perf_counter(), _busy_cpu_seconds(), self._own())
        except (OSError, ValueError):  # no /proc: report nothing
            self._start = None
        return self

    def __exit__(self, *exc) -> None:
        if self._start is not None:
            wall, busy, own = self._start
            wall, busy, own = time.perf_counter() - wall, _busy_cpu_seconds() - busy, self._own() - own
            self.share = max(0.0, busy - own) / (wall * os.cpu_count())


# -- reports --------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summary(results: list[Result], wall: float) -> dict:
    done = [r for r in results if r.outcome == "completed"]
    errors: dict[str, int] = {}
    for r in results:
        if r.outcome == "error":
            errors[r.error] = errors.get(r.error, 0) + 1
    tokens = sum(r.completion_tokens for r in done)
    latencies = [r.latency for r in done]
    ttft = [r.first_token for r in done if r.first_token is not None]
    return {
        "requests": len(results), "completed": len(done), "errors": errors,
        "hung": sum(r.outcome == "hung" for r in results), "wall_s": wall, "completion_tokens": tokens,
        "tokens_per_s": tokens / wall if wall else 0.0, "requests_per_s": len(done) / wall if wall else 0.0,
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
        "latency_p50_s": percentile(latencies, 50), "latency_p99_s": percentile(latencies, 99),
    }


def table(rows: dict[str, dict]) -> str:
    lines = ["| run | requests | completed | errors | hung | tokens/s | requests/s | first text p50 / p99 ms | "
             "latency p50 / p99 s | sequences per step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in rows.items():
        steps = s.get("server", {})
        per_step = f"{steps['tokens'] / steps['steps']:.1f}" if steps.get("steps") else "?"
        lines.append(f"| {name} | {s['requests']} | {s['completed']} | {sum(s['errors'].values())} | "
                     f"{s['hung']} | {s['tokens_per_s']:.1f} | {s['requests_per_s']:.2f} | "
                     f"{s['ttft_p50_s'] * 1000:.0f} / {s['ttft_p99_s'] * 1000:.0f} | "
                     f"{s['latency_p50_s']:.2f} / {s['latency_p99_s']:.2f} | {per_step} |")
    return "\n".join(lines)


def library_versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("tinygen", "onnxruntime", "starlette", "uvicorn", "numpy"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def record(title: str, settings: str, body: str) -> None:
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"\n## {stamp}: {title}\n\n- machine: {describe()}\n- libraries: {library_versions()}\n"
               f"- settings: {settings}\n- how to reproduce: `.venv/bin/python tools/bench/bench_server.py "
               f"{' '.join(sys.argv[1:])}`\n\n{body}\n")
    with DOC.open("a", encoding="utf-8") as f:
        f.write(section)
    print(f"appended to {DOC.relative_to(REPO)}")


# -- command line ---------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="an already-running server on loopback (else one is started)")
    p.add_argument("--model-id", help="with --url: the model id to ask for (default: from /health)")
    p.add_argument("--api-key", default=os.environ.get("TINYGEN_API_KEY"), help="with --url: its API key")
    p.add_argument("--model", type=Path, help="model directory to serve (default: the benchmark GPT-2-124M)")
    p.add_argument("--work-dir", type=Path, default=REPO / "build" / "bench", help="where models.py builds")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients in the load test")
    p.add_argument("--duration", type=float, default=30, help="seconds the load test sends requests")
    p.add_argument("--compare", type=int, default=0, metavar="N",
                   help="instead: N requests one by one, then N at once")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--prompt", default=PROMPT, help="the prompt of every request")
    p.add_argument("--seed", type=int, default=1000, help="first seed (requests use consecutive seeds)")
    p.add_argument("--max-batch", type=int, default=16, help="server: sequences decoded together")
    p.add_argument("--max-waiting", type=int, default=64, help="server: requests queued while full")
    p.add_argument("--threads", type=int, default=None, help="server: onnxruntime threads")
    p.add_argument("--stall", type=float, default=30, help="seconds without a byte that count as hung")
    p.add_argument("--request-timeout", type=float, default=120, help="seconds one request may take")
    p.add_argument("--startup-timeout", type=float, default=180, help="seconds the server may take to start")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--record", action="store_true", help=f"append the results to {DOC.relative_to(REPO)}")
    return p


def check_args(parser: argparse.ArgumentParser, args) -> None:
    for name in ("clients", "max_tokens", "max_batch", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("duration", "stall", "request_timeout", "startup_timeout"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be above 0 seconds, "
                         f"got {getattr(args, name)}")
    if args.compare < 0:
        parser.error(f"--compare must be >= 1 requests (or 0: the load test), got {args.compare}")
    if args.max_waiting < 0 or args.temperature < 0:
        parser.error("--max-waiting and --temperature must be >= 0")


def connect(args) -> Target:
    """The server at --url, which must be on loopback and answer /health."""
    parts = urlsplit(args.url)
    try:
        port = parts.port or 80
    except ValueError:
        raise ScriptError(f"--url {args.url}: the port is not a number from 1 to 65535") from None
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ScriptError("--url must be a loopback address (127.0.0.1, localhost or ::1), "
                          f"got {args.url}")
    try:
        health = get_json(parts.hostname, port, "/health")
    except OSError as exc:
        raise ScriptError(f"nothing answers at {args.url} ({exc.strerror or exc}); start "
                          f"`tinygen serve` there, or leave out --url to start one") from None
    except ValueError:
        raise ScriptError(f"{args.url}/health did not answer as `tinygen serve` does") from None
    model_id = args.model_id or (health.get("model") if isinstance(health, dict) else None)
    if not model_id:
        raise ScriptError(f"{args.url}/health names no model; give --model-id")
    return Target(parts.hostname, port, model_id, args.api_key)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    args.default_model = False
    process = None
    if args.url:
        target = connect(args)
    else:
        if args.model is not None:
            from tinygen.manifest import load_manifest

            load_manifest(args.model)  # a missing or wrong folder: one line, before a server starts
        args.default_model = args.model is None
        if args.model is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import models  # tools/bench/models.py: builds the benchmark model once

            args.model = models.gpt2_124m(args.work_dir)["onnx"]
        log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_server-{os.getpid()}.log"
        process, target = start_server(args, log_path)
    try:
        # One request first: loads everything lazily loaded, and checks the server works.
        warm = asyncio.run(stream_completion(target.host, target.port, request_body(target, args, 0),
                                             target.api_key, args.stall, args.request_timeout))
        if warm.outcome != "completed":
            raise SystemExit(f"the warm-up request failed: {warm.outcome} {warm.error}")
        outside = OutsideLoad(process.pid if process is not None else None)
        with outside:
            if args.compare:
                runs = asyncio.run(compare(target, args))
            else:
                before = server_stats(target)
                results, wall = asyncio.run(load_test(target, args))
                runs = {f"{args.clients} clients, {args.duration:g} s":
                        (results, wall, stats_delta(before, server_stats(target)))}
        if args.compare:
            runs = {f"{args.compare} {name}": run for name, run in runs.items()}
        rows = {name: {**summary(results, wall), "server": stats} for name, (results, wall, stats) in runs.items()}
        extra = {}
        if args.compare:
            seq, con = (runs[f"{args.compare} {name}"][0] for name in ("sequential", "concurrent"))
            speedup = rows[f"{args.compare} concurrent"]["tokens_per_s"] / \
                max(rows[f"{args.compare} sequential"]["tokens_per_s"], 1e-9)
            extra = {"speedup": speedup, "same_texts": all(a.texts == b.texts for a, b in zip(seq, con))}
        stats = server_stats(target)
    finally:
        if process is not None:
            stop_server(process)
    failed = any(s["hung"] or s["errors"] for s in rows.values())
    # With --url the server is a process this one cannot tell apart: its CPU counts as outside.
    load = (f"other processes{f' (the server at {args.url} included)' if args.url else ''} used "
            f"{outside.share:.0%} of the CPUs while measuring")
    if args.json:
        print(json.dumps({"runs": rows, **extra, "server_stats": stats,
                          "outside_load": outside.share,
                          "outside_load_includes_server": bool(args.url)}))
    else:
        print(table(rows))
        if extra:
            print(f"\nconcurrent / sequential throughput: {extra['speedup']:.2f}x; "
                  f"texts the same both ways: {'yes' if extra['same_texts'] else 'NO'}")
        print(load)
    if args.record:
        model = f"`{target.model_id}`"
        if args.default_model:
            model = "GPT-2-124M shape with random weights and a synthetic byte-pair vocabulary of 50257 " \
                    "(tools/bench/models.py), optimum's graph"
        settings = (f"model {model}, prompt {args.prompt!r}, max_tokens {args.max_tokens}, temperature "
                    f"{args.temperature}, streaming, "
                    f"{f'server at {args.url}' if args.url else f'server max_batch {args.max_batch}'}; "
                    f"{load}")
        body = table(rows) + "\n\n" + NOTES
        if extra:
            title = f"serving, {args.compare} concurrent vs {args.compare} sequential clients, CPU"
            body += (f"\n\nConcurrent / sequential throughput: **{extra['speedup']:.2f}x**; every text "
                     f"the same both ways: {'yes' if extra['same_texts'] else 'no'}.")
        else:
            title = f"serving load test, {args.clients} streaming clients for {args.duration:g} s, CPU"
        record(title, settings, body)
    return 1 if failed or (extra and not extra["same_texts"]) else 0


if __name__ == "__main__":
    run_main(main)
