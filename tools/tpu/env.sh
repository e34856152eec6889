#!/usr/bin/env bash
# Settings shared by the TPU scripts (sourced, not run). Override any in the environment.
# Usage, in a tools/tpu script: source "$(dirname "$0")/env.sh", then tpu_no_args "$@".
# The defaults follow torch-xla's TPU VM guide: a v4-8 (one host, 4 chips) on Ubuntu 22.04.
# A v5e host: TPU_TYPE=v5litepod-8 TPU_RUNTIME=v2-alpha-tpuv5-lite (and a zone that has them).
# A pod slice (several hosts, e.g. v4-32) needs nothing else: every script acts on all workers,
# and training runs one process per worker (see train.sh for where process 0 writes).
TPU_NAME="${TPU_NAME:-tinygen}"
TPU_ZONE="${TPU_ZONE:-us-central2-b}"
TPU_TYPE="${TPU_TYPE:-v4-8}"
TPU_RUNTIME="${TPU_RUNTIME:-tpu-ubuntu2204-base}"
TPU_PROJECT="${TPU_PROJECT:-}"  # empty: gcloud's default project
# Where the repository lives on each worker, relative to the home folder.
TPU_REPO_DIR="${TPU_REPO_DIR:-tinygen}"

# gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone and project; DRY_RUN=1 only prints it.
tpu_vm() {
    local cmd=(gcloud compute tpus tpu-vm "$@" --zone="$TPU_ZONE")
    [[ -n "$TPU_PROJECT" ]] && cmd+=(--project="$TPU_PROJECT")
    if [[ -n "${DRY_RUN:-}" ]]; then
        printf '%q ' "${cmd[@]}"
        echo
    else
        "${cmd[@]}"
    fi
}

# The scripts that call gcloud check for it first: without it, launch.sh would prepare the
# tokens (minutes) and setup.sh pack the checkout before the first call failed.
tpu_need_gcloud() {
    if [[ -z "${DRY_RUN:-}" ]] && ! command -v gcloud >/dev/null; then
        echo "$(basename "$0"): gcloud is not on PATH: install the Google Cloud CLI" \
            "(https://cloud.google.com/sdk/docs/install), or set DRY_RUN=1 to print its" \
            "commands" >&2
        exit 2
    fi
}

# The running script's header comment (its usage): the # lines after the shebang.
tpu_usage() { awk 'NR == 1 && /^#!/ { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; }

# -h or --help anywhere: the usage on stdout and exit 0, before anything is made or called.
tpu_help() {
    local arg
    for arg; do
        if [[ "$arg" == -h || "$arg" == --help ]]; then
            tpu_usage
            exit 0
        fi
    done
}

# For the scripts that take no arguments (settings come from the environment): a stray one
# (a typo, an option of another tool) stops them before they call gcloud.
tpu_no_args() {
    tpu_help "$@"
    if (($#)); then
        echo "usage: $0 (no arguments, got '$1'; settings are environment variables:" \
            "see --help)" >&2
        exit 2
    fi
}

# Run rather than sourced (bash tools/tpu/env.sh): it would do nothing, so say so.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    tpu_help "$@"
    echo "env.sh: it holds settings for the tools/tpu scripts and is sourced by them, not run" \
        "(see tools/tpu/create.sh --help)" >&2
    exit 2
fi
