#!/usr/bin/env bash
# `ray job submit` that records the code's git commit: `--working-dir` uploads the files but
# not .git, so the job could not tell which commit it runs. The commit (with "-dirty" when
# there are uncommitted changes) travels as CRN_GIT_COMMIT, which every job records in its
# MLflow run (tag crn.git_commit).
#
#   infra/submit.sh -- python jobs/train.py --store s3://crn/store ...
#   infra/submit.sh --no-wait -- python jobs/synthesize.py ...     # any `ray job submit` option
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RAY="${RAY:-$ROOT/.venv/bin/ray}"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  commit="$commit-dirty"
fi
cd "$ROOT"
exec "$RAY" job submit --working-dir . --runtime-env-json "{\"env_vars\": {\"CRN_GIT_COMMIT\": \"$commit\"}}" "$@"
