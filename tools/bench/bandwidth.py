"""Memory bandwidth of this machine, STREAM-style, with numpy: the roofline for batch-1 decoding.

    .venv/bin/python tools/bench/bandwidth.py               # all kernels, one process per core
    .venv/bin/python tools/bench/bandwidth.py --workers 2 --size-mb 512

Batch-1 decoding reads every weight once per token and does ~2 flops per weight,
so its speed limit is bytes-per-token / read bandwidth. We time the kernels STREAM
times (copy, scale, add, triad) and a pure read (a max-reduction: one load
stream, no stores, SIMD in numpy, so the loads and not the arithmetic set the
pace), over arrays far larger than the last-level cache in shared memory, each
worker process on its own slice (processes, not threads: no GIL between them),
all started together at a barrier. Bytes are counted as STREAM counts them: loads
plus stores, no write-allocate traffic. Reported are the best of --repeats runs
(STREAM's convention: what the machine can do) and the median, which on a shared
machine is the more honest figure.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402

ROOFLINE_MB = 512  # MiB per array of read_gbs, far above the caches
# name -> (bytes moved per element of one array, kernel on one worker's slices)
KERNELS = {
    "read": (4, lambda a, b, c: np.maximum.reduce(a)),
    "copy": (8, lambda a, b, c: np.copyto(c, a)),
    "scale": (8, lambda a, b, c: np.multiply(a, np.float32(3.0), out=c)),
    "add": (12, lambda a, b, c: np.add(a, b, out=c)),
    "triad": (12, lambda a, b, c: np.add(a, np.multiply(b, np.float32(3.0), out=c), out=c)),
}


def _worker(names: list[str], n: int, lo: int, hi: int, repeats: int, start, end) -> None:
    blocks = [shared_memory.SharedMemory(name=name) for name in names]
    a, b, c = (np.ndarray((n,), np.float32, buffer=m.buf)[lo:hi] for m in blocks)
    for kernel_bytes, kernel in KERNELS.values():
        for _ in range(repeats + 1):  # +1: the warm-up
            start.wait()
            kernel(a, b, c)
            end.wait()
    del a, b, c
    for m in blocks:
        m.close()


def measure(size_mb: int, workers: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{kernel: (best GB/s, median GB/s)} over 3 arrays of `size_mb` MiB each."""
    n = size_mb * 2**20 // 4
    blocks = [shared_memory.SharedMemory(create=True, size=n * 4) for _ in range(3)]
    try:
        for m, value in zip(blocks, (1.0, 2.0, 0.0)):
            np.ndarray((n,), np.float32, buffer=m.buf)[:] = value  # touched: no page faults later
        ctx = mp.get_context("fork")
        start, end = ctx.Barrier(workers + 1), ctx.Barrier(workers + 1)
        bounds = np.linspace(0, n, workers + 1).astype(int)
        procs = [ctx.Process(target=_worker, args=([m.name for m in blocks], n, int(lo), int(hi),
                                                   repeats, start, end))
                 for lo, hi in zip(bounds[:-1], bounds[1:])]
        for p in procs:
            p.start()
        results = {}
        for name, (kernel_bytes, _) in KERNELS.items():
            rates = []
            for i in range(repeats + 1):
                start.wait()
                began = time.perf_counter()
                end.wait()
                if i:  # the first run is the warm-up
                    rates.append(kernel_bytes * n / (time.perf_counter() - began) / 1e9)
            results[name] = (max(rates), statistics.median(rates))
        for p in procs:
            p.join()
        return results
    finally:
        for m in blocks:
            m.close()
            m.unlink()


def read_gbs(workers: int) -> float:
    """Median GB/s of the read kernel (one load stream, as decoding's weight reads): what the
    benchmarks' rooflines divide by (bench_decode.py, compare.py)."""
    return measure(size_mb=ROOFLINE_MB, workers=workers, repeats=10)["read"][1]


def available_mib() -> tuple[int, str] | None:
    """MiB the three arrays may take, and what limits it: memory not in use, and the free space of
    /dev/shm (where shared memory lives); None where neither can be read."""
    limits = []
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
        limits.append((kib // 1024, "memory available"))
    except (OSError, StopIteration, ValueError):
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            limits.append((pages // 2**20, "free memory"))
        except (OSError, ValueError):
            pass
    if Path("/dev/shm").is_dir():
        limits.append((shutil.disk_usage("/dev/shm").free // 2**20, "free in /dev/shm"))
    return min(limits) if limits else None


def check_fits(size_mb: int) -> None:
    available = available_mib()
    if available is not None and 3 * size_mb > available[0]:
        raise ScriptError(f"--size-mb {size_mb} needs 3 x {size_mb} MiB but this machine has "
                          f"{available[0]} MiB {available[1]}; give --size-mb "
                          f"{available[0] // 3} or less")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size-mb", type=int, default=512, help="MiB per array (3 arrays)")
    p.add_argument("--workers", type=int, default=os.cpu_count(), help="processes sharing the work")
    p.add_argument("--repeats", type=int, default=10, help="timed runs per kernel")
    args = p.parse_args(argv)
    if args.size_mb < 64 or args.workers < 1 or args.repeats < 1:
        p.error("--size-mb must be >= 64 (far above the caches), --workers and --repeats >= 1")
    check_fits(args.size_mb)
    results = measure(args.size_mb, args.workers, args.repeats)
    print(f"{args.workers} worker processes, 3 arrays of {args.size_mb} MiB\n")
    print("| kernel | best GB/s | median GB/s |\n|---|---:|---:|")
    for name, (best, median) in results.items():
        print(f"| {name} | {best:.1f} | {median:.1f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
