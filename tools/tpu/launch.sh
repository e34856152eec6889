#!/usr/bin/env bash
# Train on the TPU VM from a local text file and bring the exported model back.
#
#   tools/tpu/launch.sh TEXT LOCAL_OUT [more tinygen-train train flags]
#
# The tokenizer and the token cache are made here (LOCAL_PYTHON, default .venv from
# `make dev`), so every worker of a pod slice trains on the very same tokens. They go
# to every worker, tools/tpu/train.sh runs on all of them at once (one process per
# worker, SPMD over every chip of the slice, each worker loading its share of every
# batch), and the exported model comes back to LOCAL_OUT from TPU_MODEL_WORKER
# (default 0): only process 0 writes the model, and it runs on worker 0 unless the
# runtime numbered them otherwise (train.sh names the worker that exported).
# PRESET, STEPS, BATCH_SIZE (global), BLOCK_SIZE, VOCAB_SIZE and TRAIN_DIR are passed
# on to train.sh.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if [[ $# -lt 2 ]]; then
    echo "usage: $0 TEXT LOCAL_OUT [tinygen-train train flags]" >&2
    exit 2
fi
text="$1" local_out="$2"
shift 2
root="$(cd "$(dirname "$0")/../.." && pwd)"
name="$(basename "${text%.*}")"
prep="${TPU_LOCAL_DIR:-$root/build/tpu}/$name"  # build/ is ignored by git
local_python="${LOCAL_PYTHON:-$root/.venv/bin/python}"

TINYGEN_PYTHON="$local_python" PJRT_DEVICE=CPU "$(dirname "$0")/train.sh" "$text" "$prep" --prepare-only
settings=""
for var in PRESET STEPS BATCH_SIZE BLOCK_SIZE VOCAB_SIZE TRAIN_DIR; do
    if [[ -n "${!var:-}" ]]; then settings+="$var=$(printf '%q' "${!var}") "; fi
done
extra=""
if (($#)); then extra="$(printf ' %q' "$@")"; fi

run="runs/$name"  # on the workers, under the repository
tpu_vm ssh "$TPU_NAME" --worker=all --command="mkdir -p ~/$TPU_REPO_DIR/runs"
tpu_vm scp --recurse "$prep" "$TPU_NAME:$TPU_REPO_DIR/$run" --worker=all
tpu_vm ssh "$TPU_NAME" --worker=all --command="cd ~/$TPU_REPO_DIR && \
${settings}tools/tpu/train.sh $run/$(basename "$text") $run$extra"
mkdir -p "$(dirname "$local_out")"
tpu_vm scp --recurse "$TPU_NAME:$TPU_REPO_DIR/$run/model" "$local_out" \
    --worker="${TPU_MODEL_WORKER:-0}"
echo "exported model: $local_out (try: tinygen generate 'Once upon a time' --model $local_out)" >&2
