#!/usr/bin/env bash
# On a TPU VM worker: the venv ~/tinygen-xla with requirements-xla.txt's pins, libtpu
# (torch-xla's [tpu] extra) and the tinygen packages. Run by setup.sh; safe to run again.
# Usage, on a worker: tools/tpu/install.sh   (no arguments)
#
# The pins need Python >= 3.11 (numpy 2.4, onnxruntime 1.31, networkx 3.6), and the default
# image (tpu-ubuntu2204-base, Ubuntu 22.04) has python3 = 3.10: the venv is made with the
# first of python3.12, python3.11, python3 that is 3.11 or newer and has venv; with none, apt
# installs python3.11 and python3.11-venv (Ubuntu 22.04's universe, else the deadsnakes PPA).
# A venv left by an older Python is made again. TINYGEN_XLA_VENV: another venv folder.
set -euo pipefail
source "$(dirname "$0")/env.sh"  # for tpu_no_args: no gcloud here
tpu_no_args "$@"
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${TINYGEN_XLA_VENV:-$HOME/tinygen-xla}"
req="$root/requirements-xla.txt"
xla="$(grep -E '^torch-xla==' "$req")"

# "3.11" for an interpreter that can make venvs (Debian's python3.X needs python3.X-venv
# for ensurepip), nothing otherwise.
version_of() {
    "$1" -c 'import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}
new_enough() { [[ "$1" =~ ^3\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 11)); }
pick_python() {
    local candidate
    for candidate in python3.12 python3.11 python3; do
        if command -v "$candidate" >/dev/null && new_enough "$(version_of "$candidate")"; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
python3_version() { python3 -V 2>/dev/null || echo "no python3"; }
apt_install_python() {
    command -v apt-get >/dev/null || return 1
    local sudo=()
    ((EUID == 0)) || sudo=(sudo -n)
    echo "install.sh: $(python3_version) is too old; installing python3.11 with apt" >&2
    local get=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -y -q)
    "${get[@]}" update >&2 || true  # one unreachable source need not stop the install
    if "${get[@]}" install python3.11 python3.11-venv >&2; then
        return 0
    fi
    command -v add-apt-repository >/dev/null || return 1
    "${sudo[@]}" add-apt-repository -y ppa:deadsnakes/ppa >&2 \
        && "${get[@]}" install python3.11 python3.11-venv >&2
}

if ! python="$(pick_python)"; then
    apt_install_python || true
    if ! python="$(pick_python)"; then
        echo "install.sh: requirements-xla.txt needs Python >= 3.11 with venv; found none of" \
            "python3.12, python3.11 or python3 >= 3.11 ($(python3_version)), and apt could not" \
            "install python3.11 python3.11-venv: install one, then run this again" >&2
        exit 1
    fi
fi
# A venv of an older Python (an install.sh before this check) or one whose creation died.
if [[ -e "$venv" ]] \
    && ! { [[ -x "$venv/bin/pip" ]] && new_enough "$(version_of "$venv/bin/python")"; }; then
    if [[ ! -f "$venv/pyvenv.cfg" ]]; then
        echo "install.sh: $venv is in the way: it is not a venv (set TINYGEN_XLA_VENV)" >&2
        exit 1
    fi
    echo "install.sh: $venv is not a Python >= 3.11 venv; making it again with $python" >&2
    rm -rf "$venv"
fi
[[ -e "$venv" ]] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# -c: the pins hold while resolving, so the [tpu] extra cannot move torch.
"$venv/bin/pip" install -q -r "$req" -c "$req" "${xla/torch-xla/torch-xla[tpu]}"
"$venv/bin/pip" install -q --no-deps -e "$root/packages/runtime" -e "$root/packages/trainer"
PJRT_DEVICE=TPU "$venv/bin/python" -c \
    "import torch_xla, torch_xla.runtime as xr; print('XLA devices:', xr.global_runtime_device_count())"
