#!/usr/bin/env bash
# The real services on one machine, all on 127.0.0.1: a Ray head (with the job server),
# an MLflow tracking server (SQLite backend, artifacts proxied into the stack's folder beside
# it), and an S3 endpoint (moto's server mode, standing in for any S3-compatible store).
#
#   infra/local/stack.sh start     # start all three, write work/stack/env.sh
#   source work/stack/env.sh       # point ray job submit, MLflow and S3 clients at them
#   ray job submit --working-dir . -- python jobs/train.py --preset crn-tiny ...
#   infra/local/stack.sh status
#   infra/local/stack.sh stop
#
# Ports and folders can be changed through the environment (defaults below): STACK_DIR (the
# stack's folder, default work/stack), RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT, S3_PORT, and
# RAY_START_ARGS for other `ray start` options. Ray's other ports (client server, dashboard
# agent, runtime-env agent, metrics exporter) are picked free at start, so another Ray
# instance on the machine cannot make job submission fail. Every service is told to listen
# on 127.0.0.1 (docs/services.md#local-stack).
#
# What survives a stop: the MLflow database and its artifacts (both in the stack's folder),
# so registered models stay loadable. What does not: moto keeps S3 objects in memory, so
# the bucket is empty after a restart; `stop` says so. Ray 2.60 runs clusters with token authentication: the token is
# made once, kept in work/stack/ray-token (readable by you alone) and exported by env.sh,
# which is what `ray job submit` and the jobs' drivers read.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
STATE="${STACK_DIR:-$ROOT/work/stack}"
RAY_PORT="${RAY_PORT:-6390}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
S3_PORT="${S3_PORT:-9000}"
BUCKET="${BUCKET:-crn}"
# More `ray start` options, e.g. other agent ports when another Ray instance runs here.
RAY_START_ARGS="${RAY_START_ARGS:-}"
# Ray gets more logical CPUs than cores so training workers cannot starve Ray Data.
RAY_CPUS="${RAY_CPUS:-$(( $(nproc) * 2 > 4 ? $(nproc) * 2 : 4 ))}"
# One MLflow web worker serves one person's jobs (its requests run on threads); mlflow's
# default of 4 processes, each importing the server, more than doubled the start on 2 cores.
MLFLOW_WORKERS="${MLFLOW_WORKERS:-1}"

export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# MLflow's server-side jobs (GenAI judges, trace roll-ups) are not used here; left on, the
# server starts seven more Python processes (huey consumers) beside its own.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
# On SIGTERM a Ray 2.60 node first drains (up to 30 s) so that Ray Serve can move its
# replicas; this head has none to move, and `stop` would wait out the drain.
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}"
# Ray turns a node address of 127.0.0.1 into the host's address (so that other nodes could
# join) and binds its GCS, raylet and agents there, the metrics exporter on every interface.
# This stack is one machine: this switch (meant for laptops) keeps the node on loopback, so
# every server of the head listens on 127.0.0.1. No second node can join such a head.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
# Job entrypoints (`-- python jobs/train.py`) run with the head's PATH: make `python` the venv's.
export PATH="$VENV_BIN:$PATH"
# moto accepts any credentials; a real endpoint takes them from the usual AWS chain.
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-local}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-local}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
TOKEN_FILE="$STATE/ray-token"

ray_token() {  # the head's token: made on first use, the same on every later start
  if [ ! -s "$TOKEN_FILE" ]; then
    (umask 077; "$VENV_BIN/python" -c "import secrets; print(secrets.token_hex(32))" >"$TOKEN_FILE")
  fi
  cat "$TOKEN_FILE"
}

ray_jobs_answer() {  # the job server accepts our token (clients need the mode set too)
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(ray_token)" \
    "$VENV_BIN/ray" job list --address "http://127.0.0.1:$DASHBOARD_PORT"
}

free_ports() {  # free_ports N: N loopback ports free right now, none of the stack's own ports
  "$VENV_BIN/python" - "$1" "$S3_PORT" "$MLFLOW_PORT" "$RAY_PORT" "$DASHBOARD_PORT" <<'PY'
import socket, sys
taken, sockets = set(sys.argv[2:]), []
while len(sockets) < int(sys.argv[1]):  # S3 and MLflow may still be starting: not bound yet
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    if str(s.getsockname()[1]) not in taken:
        sockets.append(s)
print(" ".join(str(s.getsockname()[1]) for s in sockets))
PY
}

ray_jobs_run() {  # a job goes through the path every submit takes (job server -> agent -> driver)
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(ray_token)" "$VENV_BIN/ray" job submit \
    --address "http://127.0.0.1:$DASHBOARD_PORT" -- python -c "print('stack ready')"
}

wait_for() {  # wait_for <what> <command...>: retry for up to STACK_WAIT seconds (a loaded machine is slow)
  local what="$1"; shift
  local deadline=$(( SECONDS + ${STACK_WAIT:-300} ))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "error: $what did not come up (logs in $STATE)" >&2; return 1; }
    sleep 0.1
  done
}

start() {
  mkdir -p "$STATE"
  ray_token >/dev/null  # made before the head starts
  # The three services start side by side (each spends seconds importing Python), then
  # each is waited for: none needs another to start.
  echo "S3 (moto server) on $S3_ENDPOINT"
  nohup "$VENV_BIN/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/s3.log" 2>&1 &
  echo $! >"$STATE/s3.pid"

  # The artifacts live beside the database: a restart keeps both, so no registered version
  # points at artifacts that are gone (moto's S3 would forget them).
  echo "MLflow on http://127.0.0.1:$MLFLOW_PORT (artifacts in $STATE/mlartifacts)"
  nohup "$VENV_BIN/mlflow" server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    --backend-store-uri "sqlite:///$STATE/mlflow.db" \
    --artifacts-destination "$STATE/mlartifacts" >"$STATE/mlflow.log" 2>&1 &
  echo $! >"$STATE/mlflow.pid"

  echo "Ray head on 127.0.0.1:$RAY_PORT, job server on http://127.0.0.1:$DASHBOARD_PORT"
  read -r client_port agent_http agent_grpc runtime_env_port metrics_port <<<"$(free_ports 5)"
  # Jobs and workers inherit this environment: they find MLflow and S3 without flags.
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(ray_token)" \
  MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" AWS_ENDPOINT_URL="$S3_ENDPOINT" \
    nohup "$VENV_BIN/ray" start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$client_port" --dashboard-agent-listen-port "$agent_http" \
    --dashboard-agent-grpc-port "$agent_grpc" --runtime-env-agent-port "$runtime_env_port" \
    --metrics-export-port "$metrics_port" \
    --num-cpus "$RAY_CPUS" --temp-dir "$STATE/ray" --disable-usage-stats $RAY_START_ARGS >"$STATE/ray.log" 2>&1 &
  # --block keeps one process that owns this head's processes: stopping it stops exactly
  # them (a plain `ray stop` would end every Ray instance on the machine, tests' included).
  echo $! >"$STATE/ray.pid"

  wait_for "S3" curl -sf "$S3_ENDPOINT/"
  "$VENV_BIN/python" - "$S3_ENDPOINT" "$BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1])
if sys.argv[2] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=sys.argv[2])
PY
  wait_for "MLflow" curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
  # Any HTTP answer (401 without the token) means the server is up.
  wait_for "Ray job server" curl -s -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/version"
  # "Ready" means a job runs: the job server alone can answer while its agent cannot start.
  # A job that runs shows that the server takes our token too; if none runs, say which failed.
  if ! ray_jobs_run >"$STATE/ray-check.log" 2>&1; then
    if ! ray_jobs_answer >>"$STATE/ray-check.log" 2>&1; then
      echo "error: the Ray job server refuses our token (see $STATE/ray-check.log)" >&2; return 1
    fi
    echo "error: the Ray head takes no job (see $STATE/ray-check.log and $STATE/ray.log)" >&2; return 1
  fi

  cat >"$STATE/env.sh" <<ENV
# Written by infra/local/stack.sh: source it to use the local stack.
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\$(cat "$TOKEN_FILE")
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export AWS_ENDPOINT_URL=$S3_ENDPOINT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export RAY_USAGE_STATS_ENABLED=0 MLFLOW_DISABLE_TELEMETRY=true
# Ray turns a node address of 127.0.0.1 into the host's address (so that other nodes could
# join) and binds its GCS, raylet and agents there, the metrics exporter on every interface.
# This stack is one machine: this switch (meant for laptops) keeps the node on loopback, so
# every server of the head listens on 127.0.0.1. No second node can join such a head.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
ENV
  echo "ready: source $STATE/env.sh"
}

stop() {
  # Every service is told to stop, then each is waited for: their shutdowns overlap.
  local pids=() pid
  for svc in ray mlflow s3; do
    if [ -f "$STATE/$svc.pid" ]; then
      pid=$(cat "$STATE/$svc.pid")
      # mlflow server runs its web server as a child process: end that too.
      [ "$svc" = mlflow ] && { pkill -TERM -P "$pid" 2>/dev/null || true; }
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
      rm -f "$STATE/$svc.pid"
    fi
  done
  local deadline=$(( SECONDS + 30 ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  done
  echo "stopped; kept in $STATE: the MLflow database and artifacts, the Ray token"
  echo "lost: the S3 bucket's objects (moto keeps them in memory: s3://$BUCKET is empty after the next start)"
}

status() {
  curl -sf "$S3_ENDPOINT/" >/dev/null && echo "S3      up   $S3_ENDPOINT" || echo "S3      down"
  curl -sf "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null \
    && echo "MLflow  up   http://127.0.0.1:$MLFLOW_PORT" || echo "MLflow  down"
  curl -s -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/version" && ray_jobs_answer >/dev/null 2>&1 \
    && echo "Ray     up   http://127.0.0.1:$DASHBOARD_PORT" || echo "Ray     down"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
