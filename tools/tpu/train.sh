#!/usr/bin/env bash
# A text file to an exported tinygen model on this machine's XLA devices (every chip of the
# slice: on a pod slice each worker runs this same command at once, as launch.sh does).
#
#   tools/tpu/train.sh TEXT OUT [more tinygen-train train flags | --prepare-only]
#
# Writes OUT/TEXT's name (a copy of the text), OUT/tokenizer/tokenizer.json, OUT/train.tokens,
# OUT/prepared (what they were made from: the text's sha256 and the vocabulary size), TRAIN_DIR
# (default OUT/trained: the transformers model, metrics.jsonl with the XLA compile count,
# checkpoints) and OUT/model (the export). Steps already done are skipped and training resumes,
# so a second run continues; a tokenizer and tokens made from another text or vocabulary size
# are made again. --prepare-only stops after the token cache (launch.sh makes it locally).
# Settings (environment): PRESET, STEPS, BATCH_SIZE (the global batch: a multiple of the chip
# count of the whole slice), BLOCK_SIZE, VOCAB_SIZE, TRAIN_DIR, TINYGEN_PYTHON (default: the
# venv install.sh made).
#
# On a pod slice every worker trains, process 0 alone writes TRAIN_DIR, and one worker exports:
# TPU_MODEL_WORKER (default 0, where process 0 runs: torch-xla numbers the processes as the
# workers), the one launch.sh copies the model back from; the others say so and stop. Each says
# which worker it is: the number gcloud's --worker=N takes, from TPU_WORKER_ID or else the VM's
# metadata (none found: one machine, which exports). To resume there, TRAIN_DIR must be a folder
# every worker shares (an NFS mount such as Filestore): otherwise the other workers see no
# checkpoint and the trainer stops with a one-line error instead of training from different
# starting points.
set -euo pipefail
source "$(dirname "$0")/env.sh"  # for tpu_help: no gcloud here
tpu_help "$@"
if [[ $# -lt 2 ]]; then
    echo "usage: $0 TEXT OUT [tinygen-train train flags | --prepare-only]" >&2
    exit 2
fi
text="$1" out="$2"
shift 2
python="${TINYGEN_PYTHON:-$HOME/tinygen-xla/bin/python}"
# Bad input stops here, before OUT is made.
if [[ ! -f "$text" ]]; then
    echo "train.sh: $text is not a file" >&2
    exit 2
fi
if [[ -e "$out" && ! -d "$out" ]]; then
    echo "train.sh: OUT $out is a file, not a folder; choose another OUT" >&2
    exit 2
fi
if ! command -v "$python" >/dev/null; then
    echo "train.sh: no Python at $python: run tools/tpu/install.sh, or set TINYGEN_PYTHON" >&2
    exit 2
fi
export PJRT_DEVICE="${PJRT_DEVICE:-TPU}"
tinygen_train() { "$python" -m tinygen_trainer.cli "$@"; }
# This worker's number as gcloud's --worker=N counts them (the TPU VM's agent-worker-number);
# nothing where there is none (not a TPU VM).
worker_number() {
    local number="${TPU_WORKER_ID:-}"
    if [[ -z "$number" ]] && command -v curl >/dev/null; then
        local attributes=http://metadata.google.internal/computeMetadata/v1/instance/attributes
        number="$(curl -sf -m 5 -H 'Metadata-Flavor: Google' "$attributes/agent-worker-number" \
            2>/dev/null || true)"
    fi
    echo "$number"
}

mkdir -p "$out"
copy="$out/$(basename "$text")"
[[ "$text" -ef "$copy" ]] || cp "$text" "$copy"
made_from="$(sha256sum < "$copy" | cut -c1-64) vocab ${VOCAB_SIZE:-16384}"
if [[ "$(cat "$out/prepared" 2>/dev/null)" != "$made_from" ]]; then
    rm -rf "$out/prepared" "$out/tokenizer" "$out/train.tokens"
fi
if [[ ! -f "$out/tokenizer/tokenizer.json" ]]; then
    tinygen_train tokenizer "$copy" -o "$out/tokenizer/tokenizer.json" \
        --vocab-size "${VOCAB_SIZE:-16384}"
fi
if [[ ! -f "$out/train.tokens" ]]; then
    tinygen_train encode "$copy" --tokenizer "$out/tokenizer/tokenizer.json" \
        -o "$out/train.tokens" --quiet
fi
echo "$made_from" > "$out/prepared"
[[ "${1:-}" == "--prepare-only" ]] && exit 0
trained="${TRAIN_DIR:-$out/trained}"
tinygen_train train "$out/train.tokens" --tokenizer "$out/tokenizer/tokenizer.json" \
    --preset "${PRESET:-gpt2-124m}" --steps "${STEPS:-5000}" --batch-size "${BATCH_SIZE:-64}" \
    --block-size "${BLOCK_SIZE:-1024}" --device xla -o "$trained" --resume "$@"
number="$(worker_number)"
me="worker ${number:-?} ($(hostname))"
exporter="${TPU_MODEL_WORKER:-0}"
# One export: with a shared TRAIN_DIR every worker sees the model there.
if [[ -n "$number" && "$number" != "$exporter" ]]; then
    held=""  # where process 0 ran here and TRAIN_DIR is not shared, the exporter has none
    if [[ -f "$trained/train_config.json" ]]; then
        held=" (it is here too: if worker $exporter finds none, launch again with TPU_MODEL_WORKER=$number)"
    fi
    echo "$me: trained; worker $exporter exports the model$held" >&2
    exit 0
fi
if [[ ! -f "$trained/train_config.json" ]]; then
    echo "$me: trained; process 0 wrote the model on another worker: launch again with" \
        "TPU_MODEL_WORKER set to the worker whose TRAIN_DIR has it" >&2
    exit 0
fi
tinygen_train export "$trained" "$out/model"
echo "$me: exported the model to $out/model" >&2
