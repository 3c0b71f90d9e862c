#!/usr/bin/env bash
# `ray job submit` that records the code's git commit: `--working-dir` uploads the files but
# not .git, so the job could not tell which commit it runs. The commit (with "-dirty" when
# there are uncommitted changes) travels as CRN_GIT_COMMIT, which every job records in its
# MLflow run (tag crn.git_commit).
#
#   infra/submit.sh -- python jobs/train.py --store s3://crn/store ...
#   infra/submit.sh --no-wait -- python jobs/synthesize.py ...     # any `ray job submit` option
#
# Without a job server to submit to (RAY_API_SERVER_ADDRESS or RAY_ADDRESS), it says to
# source the local stack's env.sh, which sets both the address and the token: `ray job
# submit` alone would try 127.0.0.1:8265 without the token and end in a long traceback.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "${RAY_API_SERVER_ADDRESS:-}${RAY_ADDRESS:-}" ]; then
  echo "error: no Ray job server given: run 'source work/stack/env.sh' first (after infra/local/stack.sh start), or set RAY_API_SERVER_ADDRESS and RAY_AUTH_TOKEN for a cluster" >&2
  exit 2
fi
RAY="${RAY:-$ROOT/.venv/bin/ray}"
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
if [ "$commit" != unknown ] && [ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ]; then
  commit="$commit-dirty"
fi
cd "$ROOT"
exec "$RAY" job submit --working-dir . --runtime-env-json "{\"env_vars\": {\"CRN_GIT_COMMIT\": \"$commit\"}}" "$@"
