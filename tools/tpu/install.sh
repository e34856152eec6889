#!/usr/bin/env bash
# On a TPU VM worker: the venv ~/tinygen-xla with requirements-xla.txt's pins, libtpu
# (torch-xla's [tpu] extra) and the tinygen packages. Run by setup.sh; safe to run again.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${TINYGEN_XLA_VENV:-$HOME/tinygen-xla}"
req="$root/requirements-xla.txt"
xla="$(grep -E '^torch-xla==' "$req")"
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
# -c: the pins hold while resolving, so the [tpu] extra cannot move torch.
"$venv/bin/pip" install -q -r "$req" -c "$req" "${xla/torch-xla/torch-xla[tpu]}"
"$venv/bin/pip" install -q --no-deps -e "$root/packages/runtime" -e "$root/packages/trainer"
PJRT_DEVICE=TPU "$venv/bin/python" -c \
    "import torch_xla, torch_xla.runtime as xr; print('XLA devices:', xr.global_runtime_device_count())"
