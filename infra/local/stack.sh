#!/usr/bin/env bash
# The real services on one machine, all on 127.0.0.1: a Ray head (with the job server), an
# MLflow tracking server on PostgreSQL (artifacts proxied into the stack's folder beside it),
# an S3 endpoint that keeps its objects on disk (s3rver) and Azure Blob Storage (Azurite).
#
#   infra/local/stack.sh start     # start them all, write work/stack/env.sh
#   source work/stack/env.sh       # point ray job submit, MLflow, S3 and Azure clients at them
#   infra/submit.sh -- python jobs/train.py --preset crn-tiny ...
#   infra/local/stack.sh status
#   infra/local/stack.sh stop
#
# Ports and folders can be changed through the environment (defaults below): STACK_DIR (the
# stack's folder, default work/stack), RAY_PORT, DASHBOARD_PORT, MLFLOW_PORT, S3_PORT,
# AZURITE_PORT, PG_PORT, and RAY_START_ARGS for other `ray start` options. Ray's other ports
# (client server, dashboard agent, runtime-env agent, metrics exporter) are picked free at
# start, so another Ray instance on the machine cannot make job submission fail. Every
# service is told to listen on 127.0.0.1 (docs/services.md#local-stack).
#
# Everything lasts across a stop and start: PostgreSQL's data (runs, registry), MLflow's
# artifacts, the S3 bucket and the Azure container are all folders in the stack's folder. Ray
# 2.60 runs clusters with token authentication: the token is made once, kept in
# work/stack/ray-token (readable by you alone) and exported by env.sh, which is what
# `ray job submit` and the jobs' drivers read.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV_BIN="${VENV_BIN:-$ROOT/.venv/bin}"
STATE="${STACK_DIR:-$ROOT/work/stack}"
case "$STATE" in /*) ;; *) STATE="$PWD/$STATE" ;; esac  # env.sh and the services need it absolute
RAY_PORT="${RAY_PORT:-6390}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
S3_PORT="${S3_PORT:-9000}"
AZURITE_PORT="${AZURITE_PORT:-10000}"
PG_PORT="${PG_PORT:-5432}"
BUCKET="${BUCKET:-crn}"
CONTAINER="${CONTAINER:-crn}"
# Debian's postgresql (make postgres): the newest installed major version.
PG_BIN="${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"
S3RVER="$ROOT/infra/s3rver/node_modules/.bin/s3rver"
AZURITE="$ROOT/infra/azurite/node_modules/.bin/azurite-blob"
# Where submitted jobs put what they write by default (logs, checkpoints, evaluations): a
# submitted job runs in Ray's temporary copy of the checkout, so the head hands its jobs this
# folder, the checkout's own work folder (pipeline/runtime.py, work_dir).
JOBS_WORK_DIR="${CRN_WORK_DIR:-$ROOT/work}"
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
# s3rver takes one key pair, its own; a real endpoint takes credentials from the usual AWS chain.
export AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
# The AWS SDKs (pyarrow's, botocore) now send uploads as "aws-chunked" bodies with a trailing
# checksum, which s3rver would store as they are, chunk headers and all: checksums only where
# S3 requires them keeps the bodies plain (docs/services.md#local-stack).
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
S3_ENDPOINT="http://127.0.0.1:$S3_PORT"
# Azurite's well-known development account (its key is public, in Azure's documentation).
AZURE_KEY="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURE_CONNECTION="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=$AZURE_KEY;BlobEndpoint=http://127.0.0.1:$AZURITE_PORT/devstoreaccount1;"
TOKEN_FILE="$STATE/ray-token"
PGDATA="$STATE/postgres"
PG_PASSWORD_FILE="$STATE/postgres-password"

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
  "$VENV_BIN/python" - "$1" "$S3_PORT" "$MLFLOW_PORT" "$RAY_PORT" "$DASHBOARD_PORT" "$AZURITE_PORT" "$PG_PORT" <<'PY'
import socket, sys
taken, sockets = set(sys.argv[2:]), []
while len(sockets) < int(sys.argv[1]):  # the other services may still be starting: not bound yet
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

wait_for() {  # wait_for <svc> <what> <command...>: retry for up to STACK_WAIT seconds (a loaded machine
  # is slow), or until the service's process has ended: then its log says why
  local svc="$1" what="$2"; shift 2
  local deadline=$(( SECONDS + ${STACK_WAIT:-300} ))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$(cat "$STATE/$svc.pid")" 2>/dev/null \
      || { echo "error: $what exited (see $STATE/$svc.log)" >&2; return 1; }
    [ "$SECONDS" -lt "$deadline" ] || { echo "error: $what did not come up (logs in $STATE)" >&2; return 1; }
    sleep 0.1
  done
}

as_postgres() {  # PostgreSQL refuses to run as root: as root, its commands run as the user postgres
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

postgres_start() {
  # Debian's postgresql package, which `make postgres` installs.
  [ -x "$PG_BIN/pg_ctl" ] || { echo "error: PostgreSQL is not installed ($PG_BIN/pg_ctl): run make postgres" >&2; return 1; }
  if [ "$(id -u)" = 0 ]; then
    id -u postgres >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin postgres
    runuser -u postgres -- test -x "$STATE" \
      || { echo "error: the user postgres cannot enter $STATE: set STACK_DIR to a folder that others may enter" >&2; return 1; }
    mkdir -p "$PGDATA" && chown postgres: "$PGDATA" && chmod 700 "$PGDATA"
    touch "$STATE/postgres.log" && chown postgres: "$STATE/postgres.log"
  fi
  if [ ! -s "$PGDATA/PG_VERSION" ]; then  # the first start: a cluster whose superuser is mlflow
    # The socket lives in the data folder (mode 700): only its owner (and root) can reach it,
    # so over the socket no password is asked; over TCP every client needs the password.
    as_postgres "$PG_BIN/initdb" -D "$PGDATA" -U mlflow --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$STATE/postgres-init.log" 2>&1 \
      || { echo "error: initdb failed (see $STATE/postgres-init.log)" >&2; return 1; }
  fi
  as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$STATE/postgres.log" -w -t "${STACK_WAIT:-300}" \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PGDATA" start >/dev/null \
    || { echo "error: PostgreSQL did not start (see $STATE/postgres.log)" >&2; return 1; }
  if [ ! -s "$PG_PASSWORD_FILE" ]; then  # made once: the password for TCP clients (psql -h 127.0.0.1)
    (umask 077; "$VENV_BIN/python" -c "import secrets; print(secrets.token_hex(16))" >"$PG_PASSWORD_FILE")
    # Read from stdin, so that the password never appears on a command line.
    as_postgres "$PG_BIN/psql" -q -h "$PGDATA" -p "$PG_PORT" -U mlflow -d postgres -v ON_ERROR_STOP=1 \
      <<<"CREATE DATABASE mlflow; ALTER ROLE mlflow PASSWORD '$(cat "$PG_PASSWORD_FILE")';" >/dev/null
  fi
}

ray_head_start() {
  read -r client_port agent_http agent_grpc runtime_env_port metrics_port <<<"$(free_ports 5)"
  # Jobs and workers inherit this environment: they find MLflow, S3 and Azure without flags.
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN="$(ray_token)" CRN_WORK_DIR="$JOBS_WORK_DIR" \
  MLFLOW_TRACKING_URI="http://127.0.0.1:$MLFLOW_PORT" AWS_ENDPOINT_URL="$S3_ENDPOINT" \
  AZURE_STORAGE_CONNECTION_STRING="$AZURE_CONNECTION" \
    nohup "$VENV_BIN/ray" start --head --block --node-ip-address 127.0.0.1 --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$client_port" --dashboard-agent-listen-port "$agent_http" \
    --dashboard-agent-grpc-port "$agent_grpc" --runtime-env-agent-port "$runtime_env_port" \
    --metrics-export-port "$metrics_port" \
    --num-cpus "$RAY_CPUS" --temp-dir "$STATE/ray" --disable-usage-stats $RAY_START_ARGS >>"$STATE/ray.log" 2>&1 &
  # --block keeps one process that owns this head's processes: stopping it stops exactly
  # them (a plain `ray stop` would end every Ray instance on the machine, tests' included).
  echo $! >"$STATE/ray.pid"
}

ray_head_retry() {  # end what the failed start left (its processes name the stack's Ray folder), start again
  local pid
  for pid in $(grep -l -F -- "$STATE/ray/" /proc/[0-9]*/cmdline 2>/dev/null | cut -d/ -f3); do
    kill "$pid" 2>/dev/null || true
  done
  sleep 2
  mv "$STATE/ray.log" "$STATE/ray-failed-start.log"
  ray_head_start
  ray_head_up
}

ray_head_up() {  # `ray start --block` says it blocks once the node is up; any HTTP answer (401
  # without the token) means its job server is up
  wait_for ray "The Ray head" grep -q "will now block forever" "$STATE/ray.log" \
    && wait_for ray "The Ray job server" curl -s -o /dev/null "http://127.0.0.1:$DASHBOARD_PORT/api/version"
}

start() {
  mkdir -p "$STATE"
  : >"$STATE/ray.log"
  ray_token >/dev/null  # made before the head starts
  [ -x "$S3RVER" ] || { echo "error: s3rver is not installed ($S3RVER): run make s3rver" >&2; return 1; }
  [ -x "$AZURITE" ] || { echo "error: Azurite is not installed ($AZURITE): run make azurite" >&2; return 1; }
  # s3rver and Azurite start beside the Ray head, PostgreSQL and then MLflow once the head is
  # up; each is waited for at the end.
  echo "S3 (s3rver) on $S3_ENDPOINT, bucket $BUCKET, objects in $STATE/s3"
  mkdir -p "$STATE/s3/$BUCKET"  # a bucket is a folder of s3rver's
  # s3rver makes a truncated listing's continuation token with DES, which OpenSSL 3 (Node 17
  # and later) leaves to its legacy provider: without it every listing of more keys than asked
  # for (pyarrow asks for one key to tell a folder) fails with an internal error.
  NODE_OPTIONS="--openssl-legacy-provider ${NODE_OPTIONS:-}" nohup "$S3RVER" --directory "$STATE/s3" --address 127.0.0.1 --port "$S3_PORT" --silent \
    --no-vhost-buckets >"$STATE/s3.log" 2>&1 &
  echo $! >"$STATE/s3.pid"

  echo "Azure Blob Storage (Azurite) on http://127.0.0.1:$AZURITE_PORT, container $CONTAINER, in $STATE/azurite"
  # --skipApiVersionCheck: the Azure SDKs on PyPI speak newer API versions than Azurite knows.
  nohup "$AZURITE" --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --location "$STATE/azurite" \
    --skipApiVersionCheck --silent >"$STATE/azurite.log" 2>&1 &
  echo $! >"$STATE/azurite.pid"

  echo "Ray head on 127.0.0.1:$RAY_PORT, job server on http://127.0.0.1:$DASHBOARD_PORT"
  ray_head_start
  # The head first, alone until it is up: `ray start` gives its node 30 s to register (not
  # configurable), which a loaded machine can miss, the other services' start-up adding to
  # the load; then it ends, and it is started once more.
  ray_head_up || { echo "the Ray head did not start (a loaded machine?): starting it once more"; ray_head_retry; }

  echo "PostgreSQL on 127.0.0.1:$PG_PORT (user mlflow, password in $PG_PASSWORD_FILE), data in $PGDATA"
  postgres_start
  # The artifacts live beside the database: a restart keeps both. MLflow reaches PostgreSQL
  # through its socket, so no password is on its command line.
  echo "MLflow on http://127.0.0.1:$MLFLOW_PORT (artifacts in $STATE/mlartifacts)"
  nohup "$VENV_BIN/mlflow" server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers "$MLFLOW_WORKERS" \
    --backend-store-uri "postgresql+psycopg2://mlflow@/mlflow?host=$PGDATA&port=$PG_PORT" \
    --artifacts-destination "$STATE/mlartifacts" >"$STATE/mlflow.log" 2>&1 &
  echo $! >"$STATE/mlflow.pid"

  wait_for s3 "S3" curl -sf "$S3_ENDPOINT/"
  wait_for azurite "Azurite" curl -s -o /dev/null "http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list"
  AZURE_STORAGE_CONNECTION_STRING="$AZURE_CONNECTION" "$VENV_BIN/python" - "$CONTAINER" <<'PY'
import os, sys
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
service = BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
try:
    service.create_container(sys.argv[1])
except ResourceExistsError:
    pass  # made by an earlier start: Azurite keeps it
PY
  wait_for mlflow "MLflow" curl -sf "http://127.0.0.1:$MLFLOW_PORT/health"
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
# The checkout's venv first: ray, mlflow and python are its.
export PATH="$VENV_BIN:\$PATH"
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=\$(cat "$TOKEN_FILE")
export MLFLOW_TRACKING_URI=http://127.0.0.1:$MLFLOW_PORT
export AWS_ENDPOINT_URL=$S3_ENDPOINT
export AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
export AWS_DEFAULT_REGION=$AWS_DEFAULT_REGION
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
export AZURE_STORAGE_CONNECTION_STRING="$AZURE_CONNECTION"
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
  for svc in ray mlflow s3 azurite; do
    if [ -f "$STATE/$svc.pid" ]; then
      pid=$(cat "$STATE/$svc.pid")
      # mlflow server runs its web server as a child process: end that too.
      [ "$svc" = mlflow ] && { pkill -TERM -P "$pid" 2>/dev/null || true; }
      kill "$pid" 2>/dev/null || true
      pids+=("$pid")
      rm -f "$STATE/$svc.pid"
    fi
  done
  echo "stopping: waiting for the Ray head's processes to exit (up to 30 s), then PostgreSQL"
  local deadline=$(( SECONDS + 30 ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
  done
  # After MLflow, its only client: a fast shutdown ends open sessions, and it waits for them.
  if [ -s "$PGDATA/postmaster.pid" ]; then
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null || true
  fi
  echo "stopped; kept in $STATE: PostgreSQL's data (MLflow's runs and registry), MLflow's artifacts,"
  echo "the S3 bucket's objects (s3/), the Azure container (azurite/), the Ray token"
}

status() {
  curl -sf "$S3_ENDPOINT/" >/dev/null && echo "S3      up   $S3_ENDPOINT" || echo "S3      down"
  curl -s -o /dev/null "http://127.0.0.1:$AZURITE_PORT/devstoreaccount1?comp=list" \
    && echo "Azurite up   http://127.0.0.1:$AZURITE_PORT" || echo "Azurite down"
  [ -x "$PG_BIN/pg_isready" ] && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" \
    && echo "Postgres up   127.0.0.1:$PG_PORT" || echo "Postgres down"
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
