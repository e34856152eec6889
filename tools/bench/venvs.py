"""The benchmark's venvs: one per peer, from tools/bench/pins/<peer>.txt, cached outside the clone.

    python tools/bench/venvs.py                 # build or reuse every venv; path, size, build time
    python tools/bench/venvs.py genai llamacpp  # just these

Each peer runs in its own venv so that every engine gets exactly the packages it
needs and nothing else (the install-size row compares them), and so that peers
with clashing pins (the genai model builder wants transformers 5, optimum wants
4.57) can sit side by side. A venv lives at

    ${TINYGEN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/tinygen}/bench-venvs/<peer>-<sha256(pins)[:12]>

so every clone on the machine shares it and an edit to the pins builds a new one.
A `.complete` file, written last, holds the build's duration; a venv without it
(a build that died) is rebuilt from scratch. Builds take a lock, so two runs never
build the same venv at once, and compile with one job (llama-cpp-python builds
llama.cpp from source: CMAKE_BUILD_PARALLEL_LEVEL=1).

The tinygen venv holds the runtime's pinned dependencies plus packages/runtime
itself, installed without dependencies and reinstalled whenever its sources change
(a stamp holds their hash), so it is the runtime as `pip install` gives it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
from script_errors import ArgumentParser, ScriptError, run_main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PINS = Path(__file__).resolve().parent / "pins"
RUNTIME = REPO / "packages" / "runtime"
PEERS = ("tinygen", "transformers", "optimum", "genai", "genai-builder", "llamacpp")
_DONE = ".complete"
_RUNTIME_STAMP = ".tinygen-runtime"


def cache_root() -> Path:
    base = os.environ.get("TINYGEN_CACHE") or \
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tinygen"
    return Path(base) / "bench-venvs"


@dataclass(frozen=True)
class Venv:
    peer: str
    path: Path
    build_seconds: float  # how long the build took when it was built (0: unknown)
    built_now: bool  # built by this call (False: reused from the cache)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def size_bytes(self) -> int:
        return tree_bytes(self.path)


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (links not followed): what the install takes."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            if not os.path.islink(full):
                total += os.stat(full).st_size
    return total


def pins_file(peer: str) -> Path:
    if peer not in PEERS:
        raise SystemExit(f"unknown peer '{peer}'; peers are {', '.join(PEERS)}")
    return PINS / f"{peer}.txt"


def venv_path(peer: str) -> Path:
    digest = hashlib.sha256(pins_file(peer).read_bytes()).hexdigest()[:12]
    return cache_root() / f"{peer}-{digest}"


def runtime_hash() -> str:
    """sha256 over packages/runtime's pyproject and sources: a change reinstalls tinygen."""
    h = hashlib.sha256()
    files = [RUNTIME / "pyproject.toml", RUNTIME / "README.md"] + sorted(
        p for p in (RUNTIME / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p))
    for p in files:
        h.update(str(p.relative_to(RUNTIME)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def ensure(peer: str, say=None) -> Venv:
    """Build the venv of `peer` unless a complete one exists; return it."""
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    path = venv_path(peer)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others then find it done
        built_now = False
        if not (path / _DONE).is_file():
            _build(peer, path, say)
            built_now = True
        if peer == "tinygen":
            _install_runtime(path, say)
        info = json.loads((path / _DONE).read_text() or "{}")
        _forget_stale(peer, path)
        return Venv(peer, path, float(info.get("seconds", 0.0)), built_now)


def _build(peer: str, path: Path, say) -> None:
    pins = pins_file(peer)
    say(f"building the {peer} venv in {path} (from {pins.relative_to(REPO)})")
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    python = os.environ.get("PYTHON") or shutil.which("python3.11") or sys.executable
    made = subprocess.run([python, "-m", "venv", str(path)], capture_output=True, text=True)
    if made.returncode:  # e.g. a Debian Python without its python3.X-venv package
        said = (made.stdout + made.stderr).strip().splitlines() or ["no message"]
        raise ScriptError(f"{python} -m venv failed (exit {made.returncode}): {said[-1]}; set "
                          f"PYTHON to a Python 3.11 that can make venvs")
    env = dict(os.environ, CMAKE_BUILD_PARALLEL_LEVEL="1", MAKEFLAGS="-j1")
    log = Path(f"{path}.log")
    # -c as well as -r: no dependency may move a pin (above all torch) while resolving.
    with log.open("w") as out:
        code = subprocess.run([str(path / "bin" / "pip"), "install", "--disable-pip-version-check",
                               "-r", str(pins), "-c", str(pins)],
                              stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    if code:
        tail = log.read_text(errors="replace").splitlines()[-30:]
        raise SystemExit("\n".join(tail) + f"\nbuilding the {peer} venv failed; its log: {log}")
    seconds = time.perf_counter() - started
    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (path / _DONE).write_text(json.dumps({"seconds": round(seconds, 1), "built": built}))
    say(f"{peer} venv ready in {seconds:.0f} s")


def _install_runtime(path: Path, say) -> None:
    stamp = path / _RUNTIME_STAMP
    wanted = runtime_hash()
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    say(f"installing packages/runtime into {path}")
    # From a copy: building in place would leave build/ and *.egg-info in the source tree.
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "runtime"
        shutil.copytree(RUNTIME, copy, ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                     "__pycache__"))
        subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        "--no-deps", "--force-reinstall", str(copy)], check=True)
    stamp.write_text(wanted)


def _forget_stale(peer: str, keep: Path) -> None:
    """Venvs of this peer's older pins, unused for two weeks, go."""
    for old in cache_root().glob(f"{peer}-*/{_DONE}"):
        folder = old.parent
        if folder != keep and time.time() - old.stat().st_mtime > 14 * 86400:
            old.unlink()  # first: a removal cut short leaves no venv that counts as built
            shutil.rmtree(folder, ignore_errors=True)
    os.utime(keep / _DONE)  # its age is the time since last use


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0],
                            epilog=f"peers: {', '.join(PEERS)}")
    parser.add_argument("peers", nargs="*", metavar="PEER",
                        help="venvs to build or reuse (default: every peer)")
    peers = parser.parse_args(argv).peers or list(PEERS)
    unknown = [p for p in peers if p not in PEERS]
    if unknown:  # before any build
        parser.error(f"unknown peer {', '.join(map(repr, unknown))}; peers are {', '.join(PEERS)}")
    for peer in dict.fromkeys(peers):
        venv = ensure(peer)
        print(f"{peer}\t{venv.path}\t{venv.size_bytes() / 1e6:.0f} MB\t"
              f"built in {venv.build_seconds:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
