# Settings shared by the TPU scripts (sourced, not run). Override any in the environment.
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
