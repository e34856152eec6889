#!/usr/bin/env bash
# Create the TPU VM (all hosts of the slice). Usage: tools/tpu/create.sh
set -euo pipefail
source "$(dirname "$0")/env.sh"
tpu_no_args "$@"
tpu_need_gcloud
tpu_vm create "$TPU_NAME" --accelerator-type="$TPU_TYPE" --version="$TPU_RUNTIME"
