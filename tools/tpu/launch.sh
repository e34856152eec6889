#!/usr/bin/env bash
# Train on the TPU VM from a local text file and bring the exported model back.
#
#   tools/tpu/launch.sh TEXT LOCAL_OUT [more tinygen-train train flags]
#
# The tokenizer and the token cache are made here (LOCAL_PYTHON, default .venv from
# `make dev`), so every worker of a pod slice trains on the very same tokens. They go
# to every worker, tools/tpu/train.sh runs on all of them at once (one process per
# worker, SPMD over every chip of the slice, each worker loading its share of every
# batch), and the model comes back to LOCAL_OUT from TPU_MODEL_WORKER (default 0,
# where process 0 writes it), the one worker that exports it (train.sh prints which).
# PRESET, STEPS, BATCH_SIZE (global), BLOCK_SIZE, VOCAB_SIZE, TRAIN_DIR and
# TPU_MODEL_WORKER are passed on to train.sh.
#
# The preparation (build/tpu/NAME-KEY here) and the run (runs/NAME-KEY on the workers) are
# named after the text and KEY, the start of its sha256: the same text launched again resumes
# its run; an edited text is prepared again and trains a run of its own. LOCAL_OUT may be new,
# empty or an earlier tinygen model, which the new export replaces.
set -euo pipefail
source "$(dirname "$0")/env.sh"
tpu_help "$@"
if [[ $# -lt 2 ]]; then
    echo "usage: $0 TEXT LOCAL_OUT [tinygen-train train flags]" >&2
    exit 2
fi
text="$1" local_out="${2%/}"
shift 2
if [[ ! -f "$text" ]]; then
    echo "launch.sh: $text is not a file" >&2
    exit 2
fi
if [[ -e "$local_out" && ! -f "$local_out/tinygen.json" ]] \
    && ! { [[ -d "$local_out" ]] && [[ -z "$(ls -A "$local_out")" ]]; }; then
    echo "launch.sh: $local_out is neither empty nor a tinygen model to replace;" \
        "choose a new LOCAL_OUT" >&2
    exit 2
fi
root="$(cd "$(dirname "$0")/../.." && pwd)"
key="$(sha256sum < "$text" | cut -c1-12)"
stem="$(basename "${text%.*}")"
# The run's folder goes through scp as a remote path: letters, digits, . _ - only.
name="$(printf '%s' "$stem" | tr -c 'A-Za-z0-9._-' '_')-$key"
prep="${TPU_LOCAL_DIR:-$root/build/tpu}/$name"  # build/ is ignored by git
local_python="${LOCAL_PYTHON:-$root/.venv/bin/python}"
# Said here: train.sh would name install.sh and TINYGEN_PYTHON, which are the workers' and
# which this script overrides.
if ! command -v "$local_python" >/dev/null; then
    echo "launch.sh: no Python at $local_python to prepare the tokens here: run make dev," \
        "or set LOCAL_PYTHON to a Python with tinygen-trainer" >&2
    exit 2
fi
tpu_need_gcloud

TINYGEN_PYTHON="$local_python" PJRT_DEVICE=CPU "$(dirname "$0")/train.sh" "$text" "$prep" --prepare-only
settings=""
for var in PRESET STEPS BATCH_SIZE BLOCK_SIZE VOCAB_SIZE TRAIN_DIR TPU_MODEL_WORKER; do
    if [[ -n "${!var:-}" ]]; then settings+="$var=$(printf '%q' "${!var}") "; fi
done
extra=""
if (($#)); then extra="$(printf ' %q' "$@")"; fi

# The preparation goes as one archive, unpacked into the run's folder on every worker: a
# second launch refreshes the files there (scp -r of a folder that exists would nest it).
tmp="$(mktemp -d)"
fetched=""
trap 'rm -rf "$tmp" ${fetched:+"$fetched"}' EXIT
archive="$tmp/$name.tgz"
tar -czf "$archive" -C "$prep" .
run="runs/$name"  # on the workers, under the repository
repo="$(printf '%q' "$TPU_REPO_DIR")"
q_run="$(printf '%q' "$run")"
tpu_vm ssh "$TPU_NAME" --worker=all --command="mkdir -p ~/$repo/$q_run"
tpu_vm scp "$archive" "$TPU_NAME:$TPU_REPO_DIR/$run.tgz" --worker=all
tpu_vm ssh "$TPU_NAME" --worker=all --command="cd ~/$repo \
&& tar -xzf $q_run.tgz -C $q_run && rm -f $q_run.tgz \
&& ${settings}tools/tpu/train.sh $(printf '%q' "$run/$(basename "$text")") $q_run$extra"

# The model comes into a new folder beside LOCAL_OUT, then takes its place.
parent="$(dirname "$local_out")"
mkdir -p "$parent"
fetched="$(mktemp -d "$parent/.tpu-model.XXXXXX")"
tpu_vm scp --recurse "$TPU_NAME:$TPU_REPO_DIR/$run/model" "$fetched" \
    --worker="${TPU_MODEL_WORKER:-0}"
[[ -z "${DRY_RUN:-}" ]] || exit 0  # the commands are printed; nothing came back
if [[ -e "$local_out" ]]; then
    mv "$local_out" "$fetched/old"
fi
mv "$fetched/model" "$local_out"
echo "exported model: $local_out (try: tinygen generate 'Once upon a time' --model $local_out)" >&2
