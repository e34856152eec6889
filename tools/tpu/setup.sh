#!/usr/bin/env bash
# Copy this checkout to every worker and install the XLA venv there (tools/tpu/install.sh).
# Usage: tools/tpu/setup.sh    (again after changing the code: it re-copies, pip skips what is there)
set -euo pipefail
source "$(dirname "$0")/env.sh"
root="$(cd "$(dirname "$0")/../.." && pwd)"
archive="$(mktemp -d)/tinygen.tgz"
# Tracked and new files, not ignored ones (no venvs, no build output).
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - -czf "$archive")
tpu_vm scp "$archive" "$TPU_NAME:tinygen.tgz" --worker=all
tpu_vm ssh "$TPU_NAME" --worker=all --command="mkdir -p ~/$TPU_REPO_DIR \
    && tar -xzf ~/tinygen.tgz -C ~/$TPU_REPO_DIR && ~/$TPU_REPO_DIR/tools/tpu/install.sh"
