#!/usr/bin/env bash
# Builds the image's runtime stage from the host's release binary and runs it the way the
# sidecar runs: as uid 65532, configured by environment only, against a throwaway
# PostgreSQL and DS server that `ds-sync dev --no-capture` starts on the host. Checks, through
# the container: capture (a row inserted shows up in its stream), ingest (an event POSTed
# shows up in session_events), /metrics, the image's HEALTHCHECK going healthy, and a
# graceful stop (exit 0).
#
# No registry is reachable here, so the base image is made from Debian packages with
# mmdebstrap (cached as a tarball under the target directory), and the builder stage is
# replaced by the host-built binary (`--build-context build=DIR`). See
# ../shared/reference/containers.md for the podman settings this sandbox needs.
#
#   bash docker/test.sh                      # builds target/release/ds-sync if needed
#   DS_SYNC_BIN=/path/to/ds-sync bash docker/test.sh
#
# Needs podman, runc, mmdebstrap, curl and psql; installs the first four with apt-get when
# they are missing and it runs as root. Exits non-zero with the container's log on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=$TARGET_DIR/docker-test
BASE_IMAGE=localhost/ds-sync-test-base:bookworm
IMAGE=localhost/ds-sync:test
NAME=ds-sync-test-$$
SUITE=bookworm

say() { echo "docker/test.sh: $*" >&2; }
fail() {
  say "FAILED: $*"
  if [ -n "${CONTAINER_STARTED:-}" ]; then
    say "--- container log ---"
    podman --runtime runc logs "$NAME" >&2 || true
  fi
  if [ -f "${WORK:-/nonexistent}/dev.log" ]; then
    say "--- ds-sync dev log (tail) ---"
    tail -n 40 "$WORK/dev.log" >&2 || true
  fi
  exit 1
}

install_tools() {
  local missing=()
  for tool in podman runc mmdebstrap curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    fail "missing ${missing[*]}; install them (apt-get install -y podman runc mmdebstrap curl)"
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "${missing[@]}" >/dev/null
}

find_psql() {
  if command -v psql >/dev/null 2>&1; then
    command -v psql
    return
  fi
  ls /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1
}

# A free loopback port: nothing answers a connection to it.
free_port() {
  local port
  for _ in $(seq 1 50); do
    port=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  fail "no free port found"
}

# wait_until SECONDS DESCRIPTION COMMAND...: polls every 0.5 s.
wait_until() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out after ${seconds}s waiting for $what"
    sleep 0.5
  done
}

cleanup() {
  if [ -n "${CONTAINER_STARTED:-}" ]; then
    podman --runtime runc rm -f "$NAME" >/dev/null 2>&1 || true
  fi
  if [ -n "${DEV_PID:-}" ] && kill -0 "$DEV_PID" 2>/dev/null; then
    kill -INT "$DEV_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$DEV_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$DEV_PID" 2>/dev/null || true
  fi
  podman --runtime runc rmi -f "$IMAGE" >/dev/null 2>&1 || true
  [ -n "${WORK:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

install_tools
PSQL=$(find_psql)
[ -n "$PSQL" ] || fail "psql not found (apt-get install -y postgresql-client)"
WORK=$(mktemp -d)

# The sandbox forbids raising rlimits and runs cgroup v1 in hybrid mode.
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF=$WORK/containers.conf
pod() { podman --runtime runc "$@"; }

BIN=${DS_SYNC_BIN:-}
if [ -z "$BIN" ]; then
  say "building the release binary"
  cargo build --release --locked --quiet
  BIN=$TARGET_DIR/release/ds-sync
fi
[ -x "$BIN" ] || fail "no ds-sync binary at $BIN"
# The sidecar binary carries no load-test runner (cargo feature `bench`); asked for it, it
# says how to get it.
if "$BIN" bench --help >/dev/null 2>"$WORK/bench.err"; then
  fail "the release binary runs \`bench\`: it must be built without the bench feature"
fi
grep -q -- "--features bench" "$WORK/bench.err" \
  || fail "\`ds-sync bench\` without the runner does not say how to get it: $(cat "$WORK/bench.err")"

# The base image: Debian $SUITE's essential packages and CA certificates, like distroless cc.
if ! pod image exists "$BASE_IMAGE"; then
  mkdir -p "$CACHE"
  tarball=$CACHE/base-$SUITE.tar
  if [ ! -s "$tarball" ]; then
    say "making the base image with mmdebstrap (once; cached in $tarball)"
    rm -rf "$tarball.partial"
    mmdebstrap --quiet --format=tar --variant=essential --include=ca-certificates \
      "$SUITE" "$tarball.partial" || fail "mmdebstrap could not make the base image"
    mv "$tarball.partial" "$tarball"
  fi
  pod import --quiet "$tarball" "$BASE_IMAGE" >/dev/null || fail "importing $tarball"
fi

say "building the runtime stage of docker/Dockerfile from $BIN"
mkdir -p "$WORK/ctx/out"
cp "$BIN" "$WORK/ctx/out/ds-sync"
pod build --quiet --format docker --network host --target runtime \
  --build-context build="$WORK/ctx" \
  --build-arg RUNTIME_IMAGE="$BASE_IMAGE" --build-arg BUILDER_IMAGE="$BASE_IMAGE" \
  -t "$IMAGE" -f docker/Dockerfile "$WORK/ctx" >/dev/null || fail "podman build"
[ "$(pod image inspect --format '{{.Config.User}}' "$IMAGE")" = "65532:65532" ] \
  || fail "the image does not run as 65532:65532"
# podman logs an error about systemd timers for healthchecks on every run here: kept in
# files, shown only when a step fails.
pod run --rm --network host --health-interval disable "$IMAGE" --version 2>"$WORK/podman.err" \
  | grep -q '^ds-sync ' || fail "the image's entrypoint is not ds-sync: $(cat "$WORK/podman.err")"

say "starting a throwaway PostgreSQL and DS server (ds-sync dev --no-capture)"
env -u POSTGRES_URL -u DATABASE_URL -u DS_SERVER_URL -u DS_SYNC_LISTEN \
  "$BIN" dev --no-capture >"$WORK/dev.log" 2>&1 &
DEV_PID=$!
wait_until 120 "the dev servers" grep -q "Ctrl-C removes the throwaway servers" "$WORK/dev.log"
ADMIN_URL=$(sed -n "s/^ *psql '\([^']*\)'.*/\1/p" "$WORK/dev.log" | head -n 1)
DS_URL=$(sed -n 's/^ *DS server *\(http[^ ]*\).*/\1/p' "$WORK/dev.log" | head -n 1)
[ -n "$ADMIN_URL" ] && [ -n "$DS_URL" ] || fail "cannot read the server URLs from the dev banner"
# A database of its own: dev ingests in its own, and subscriptions are per database.
PG_URL=${ADMIN_URL%/postgres}/image
"$PSQL" "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE image" >/dev/null \
  || fail "creating the test database"
sql() { "$PSQL" "$PG_URL" -X -q -t -A -v ON_ERROR_STOP=1 -c "$1"; }
sql "$(cat docker/postgres-init.sql)" >/dev/null || fail "creating the table items"

PORT=$(free_port)
say "running the image as the sidecar (metrics and health on 127.0.0.1:$PORT)"
curl -fsS -X PUT -H 'Content-Type: application/json' "$DS_URL/v1/stream/image-events" >/dev/null \
  || fail "creating the ingest stream"
# --health-interval disable: no systemd here to schedule the checks; `podman healthcheck run`
# below runs the image's HEALTHCHECK command itself.
pod run -d --name "$NAME" --network host --health-interval disable \
  -e POSTGRES_URL="$PG_URL" \
  -e DS_SERVER_URL="$DS_URL" \
  -e DS_SYNC_TABLES=items \
  -e DS_SYNC_INGEST=image-events \
  -e DS_SYNC_SLOT=image_slot \
  -e DS_SYNC_PUBLICATION=image_pub \
  -e DS_SYNC_LISTEN="127.0.0.1:$PORT" \
  "$IMAGE" >/dev/null 2>"$WORK/podman.err" || fail "podman run: $(cat "$WORK/podman.err")"
CONTAINER_STARTED=1
pid=$(pod inspect --format '{{.State.Pid}}' "$NAME")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
[ "$uid" = "65532" ] || fail "the container's process runs as uid $uid, not 65532"

ready() { curl -fsS "http://127.0.0.1:$PORT/readyz"; }
wait_until 120 "/readyz to answer 200" ready

say "capture: a row inserted on the host reaches pg-items through the container"
sql "INSERT INTO items (title, body) VALUES ('from-the-image', 'x')"
in_stream() { curl -fsS "$DS_URL/v1/stream/pg-items?offset=-1" | grep -q 'from-the-image'; }
wait_until 60 "the row in pg-items" in_stream

say "ingest: an event POSTed to image-events reaches session_events through the container"
curl -fsS -X POST -H 'Content-Type: application/json' \
  --data '[{"key":"image-1","type":"check","operation":"insert"}]' \
  "$DS_URL/v1/stream/image-events" >/dev/null || fail "POST to image-events"
ingested() {
  [ "$(sql "SELECT count(*) FROM session_events WHERE stream_name = 'image-events' AND event_key = 'image-1'")" = 1 ]
}
wait_until 60 "the event in session_events" ingested

metrics=$(curl -fsS "http://127.0.0.1:$PORT/metrics") || fail "GET /metrics"
grep -q '^ds_sync_capture_changes_total{table="items",op="insert"} 1$' <<<"$metrics" \
  || fail "/metrics does not count the insert: $(grep capture_changes <<<"$metrics")"
grep -q '^ds_sync_ingest_rows_total{stream="image-events"} 1$' <<<"$metrics" \
  || fail "/metrics does not count the ingested row"

say "healthcheck: the image's HEALTHCHECK (ds-sync health) goes healthy"
pod healthcheck run "$NAME" >/dev/null || fail "podman healthcheck run: unhealthy"
status=$(pod inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null \
  || pod inspect --format '{{.State.Healthcheck.Status}}' "$NAME")
[ "$status" = "healthy" ] || fail "health status is '$status', not healthy"

say "stopping: SIGTERM delivers what is in flight and exits 0"
pod stop --time 60 "$NAME" >/dev/null 2>"$WORK/podman.err" \
  || fail "podman stop: $(cat "$WORK/podman.err")"
code=$(pod inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = "0" ] || fail "the container exited with $code"

echo "docker/test.sh: 1 passed, 0 failed"
