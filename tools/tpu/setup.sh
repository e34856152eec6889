#!/usr/bin/env bash
# Copy this checkout to every worker and install the XLA venv there (tools/tpu/install.sh).
# Usage: tools/tpu/setup.sh    (again after changing the code: it re-copies, pip skips what is there)
#
# What is copied is the working tree as git sees it: tracked files that still exist (a file
# deleted but not yet committed is left out) and new files, not ignored ones (no venvs, no build
# output). Each worker keeps the list it was sent (.tinygen-shipped) and, on the next setup,
# deletes the files of the last list that are not in the new one; nothing else there is touched
# (runs/ keeps its checkpoints).
set -euo pipefail
source "$(dirname "$0")/env.sh"
tpu_no_args "$@"
tpu_need_gcloud
root="$(cd "$(dirname "$0")/../.." && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
archive="$tmp/tinygen.tgz"
(cd "$root" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' file; do
        if [[ -e "$file" || -L "$file" ]]; then printf '%s\0' "$file"; fi
    done \
    | tar --null --no-recursion -T - -czf "$archive")
# shellcheck disable=SC2088  # the ~ is the worker's home: it expands there, not here
repo="~/$(printf '%q' "$TPU_REPO_DIR")"
# On the worker: unpack over the tree, then delete what was shipped last time and is gone now
# (tar -t lists what was shipped, one name a line; the lists compare sorted).
unpack="mkdir -p $repo && cd $repo && tar -xzf ~/tinygen.tgz \
    && tar -tzf ~/tinygen.tgz | LC_ALL=C sort > .tinygen-shipped.new \
    && { [ ! -f .tinygen-shipped ] || LC_ALL=C comm -23 .tinygen-shipped .tinygen-shipped.new \
        | while IFS= read -r gone; do rm -f -- \"\$gone\"; done; } \
    && mv .tinygen-shipped.new .tinygen-shipped"
tpu_vm scp "$archive" "$TPU_NAME:tinygen.tgz" --worker=all
tpu_vm ssh "$TPU_NAME" --worker=all --command="$unpack && $repo/tools/tpu/install.sh"
