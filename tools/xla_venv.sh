#!/usr/bin/env bash
# Build (or reuse) the XLA venv and print its path on stdout; progress goes to stderr.
#
# torch-xla pins torch exactly (2.9.0, a ~7 GB CUDA build from PyPI), while the main
# .venv keeps the small CPU torch, so XLA work gets a venv of its own. It is cached
# outside the clone, keyed by what it is built from: requirements-xla.txt, this script
# and the Python that builds it (`python -V`), in one sha256:
#
#     ${TINYGEN_CACHE:-${XDG_CACHE_HOME:-~/.cache}/tinygen}/xla-venv-<sha256>
#
# so every clone on the machine shares it, an edit to the requirements or to this
# script, or another Python (PYTHON, default python3.11, else python3; 3.11 or newer),
# builds a new one. It is built in place and published by its .complete marker, written
# last (a venv cannot be built aside and renamed into place: its scripts name its path);
# one without the marker (a build that died) is rebuilt from scratch. Concurrent callers
# wait on its lock (<venv>.lock) instead of building twice. Venvs of other keys go (each
# is ~7 GB) once unused for two weeks, or, if their build died without the marker, a day
# after it began; never while a caller holds their lock, and marker first, so no caller
# takes a venv being deleted for a complete one. The tinygen packages are not
# installed into it: run with the PYTHONPATH `tools/xla_venv.sh --pythonpath` prints,
# so the venv never holds a stale copy of the code. `tools/xla_venv.sh --path` prints
# the venv's path and builds nothing.
#
# Usage: tools/xla_venv.sh [--path | --pythonpath | --help]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

# One mode at most, checked before anything is built: a typo must not start a ~7 GB pip run.
case "$#:${1:-}" in
    0: | 1:--path | 1:--pythonpath) ;;
    1:-h | 1:--help)
        awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"
        exit 0
        ;;
    *)
        echo "usage: $0 [--path | --pythonpath | --help] (got: $*)" >&2
        exit 2
        ;;
esac

if [[ "${1:-}" == "--pythonpath" ]]; then
    echo "$root/packages/runtime/src:$root/packages/trainer/src:$root/packages/tinymodel/src"
    exit 0
fi

req="$root/requirements-xla.txt"
python="${PYTHON:-python3.11}"
[[ -n "${PYTHON:-}" ]] || command -v "$python" >/dev/null || python=python3
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    found="$("$python" -V 2>/dev/null)" || found="not runnable"
    echo "xla_venv.sh: requirements-xla.txt needs Python >= 3.11, and $python is $found:" \
        "set PYTHON to one" >&2
    exit 1
fi
# The key: the contents of the requirements and of this script, and the Python's version.
hash="$({ sha256sum "$req" "${BASH_SOURCE[0]}" | cut -c1-64; "$python" -V 2>&1; } \
    | sha256sum | cut -c1-64)"
cache="${TINYGEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tinygen}"
venv="$cache/xla-venv-$hash"
if [[ "${1:-}" == "--path" ]]; then
    echo "$venv"
    exit 0
fi
mkdir -p "$cache"

# Open and flock $1.lock on fd $lock_fd; more arguments go to flock (-n: fail if it is held).
# The cleanup below deletes the lock file of the venv it deletes, and a lock won on a file
# since deleted guards nothing: then it locks the file there now.
lock() {
    while true; do
        exec {lock_fd}>"$1.lock"
        flock "${@:2}" "$lock_fd" || { exec {lock_fd}>&-; return 1; }
        [[ "/dev/fd/$lock_fd" -ef "$1.lock" ]] && return 0
        exec {lock_fd}>&-
    done
}

lock "$venv"  # one build at a time; the others then find it complete
if [[ ! -f "$venv/.complete" ]]; then
    echo "building the XLA venv in $venv (a few minutes, ~7 GB)" >&2
    rm -rf "$venv"
    log="$venv.log"
    "$python" -m venv "$venv"
    # -c as well as -r: no dependency may move a pin (above all torch) while resolving.
    if ! "$venv/bin/pip" install --disable-pip-version-check -r "$req" -c "$req" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "building the XLA venv failed; the whole log is $log" >&2
        exit 1
    fi
    PJRT_DEVICE=CPU "$venv/bin/python" - "$req" >&2 <<'EOF'
import re, sys
import torch, torch_xla
pins = dict(re.findall(r"^(torch|torch-xla)==(\S+)", open(sys.argv[1]).read(), re.M))
got = {"torch": torch.__version__.split("+")[0], "torch-xla": torch_xla.__version__.split("+")[0]}
if got != pins:
    sys.exit(f"XLA venv has {got}, requirements-xla.txt pins {pins}")
EOF
    echo "XLA venv ready" >&2
fi
touch "$venv/.complete"  # its age is the time since last use
# Venvs of other keys go (each is ~7 GB): complete ones unused for two weeks, and builds that
# died (no .complete) begun over a day ago. Their age is read under their lock, which any
# caller about to build or use one holds.
for dir in "$cache"/xla-venv-*/; do
    dir="${dir%/}"
    if [[ "$dir" == "$venv" || ! -d "$dir" ]] || ! lock "$dir" -n; then
        continue  # ours, or another caller holds it
    fi
    if [[ -f "$dir/.complete" ]]; then
        stale="$(find "$dir/.complete" -mtime +14)"
    else
        stale="$(find "$dir" -maxdepth 0 -mmin +1440)"
    fi
    if [[ -n "$stale" ]]; then
        rm -f "$dir/.complete"  # first: from here on nothing takes it for complete
        rm -rf "$dir" "$dir.log" "$dir.lock"
    fi
    exec {lock_fd}>&-
done
echo "$venv"
