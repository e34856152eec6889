#!/usr/bin/env bash
# Delete the TPU VM (it bills while it exists). Usage: tools/tpu/delete.sh
set -euo pipefail
source "$(dirname "$0")/env.sh"
tpu_no_args "$@"
tpu_need_gcloud
tpu_vm delete "$TPU_NAME" --quiet
