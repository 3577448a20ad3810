#!/usr/bin/env bash
# Starts a local stolon-rs cluster on 127.0.0.1: etcd, 2 sentinels, 3 keepers and 1 proxy,
# prints how to connect, and runs until Ctrl-C, then stops everything it started.
# Work directory: $STOLON_DEMO_DIR (default /tmp/stolon-demo); it is recreated at each run.
# STOLON_DEMO_PROFILE=debug uses a debug build (faster to build, what the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${STOLON_DEMO_DIR:-/tmp/stolon-demo}
ETCD_PORT=${STOLON_DEMO_ETCD_PORT:-23790}
PROXY_PORT=${STOLON_DEMO_PROXY_PORT:-25432}
PG_BASE_PORT=${STOLON_DEMO_PG_BASE_PORT:-25433}
KEEPER_HTTP_BASE_PORT=${STOLON_DEMO_KEEPER_HTTP_BASE_PORT:-25533}
CLUSTER=demo
SU=stolon
SU_PASSWORD=stolon-demo-password
REPL=repluser
REPL_PASSWORD=stolon-demo-repl-password

bash scripts/setup.sh
# STOLON_DEMO_PROFILE=debug reuses the test build instead of a release build.
PROFILE=${STOLON_DEMO_PROFILE:-release}
echo "demo: building ($PROFILE)..."
if [ "$PROFILE" = release ]; then cargo build --release --quiet --bins; else cargo build --quiet --bins; fi
BIN=$PWD/target/$PROFILE
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)

if [ -e "$WORK" ] && [ ! -e "$WORK/.stolon-demo" ]; then
  echo "demo: $WORK exists and was not made by this script; set STOLON_DEMO_DIR elsewhere" >&2
  exit 1
fi
rm -rf "$WORK"
mkdir -p "$WORK/logs"
touch "$WORK/.stolon-demo"
# Keepers run as root here drop PostgreSQL to the postgres OS user, which must reach its dirs.
chmod 755 "$WORK"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping..."
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "demo: stopped; logs and data are in $WORK"
}
trap cleanup INT TERM EXIT

start() { # name, command...
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  pids+=($!)
}

start etcd etcd --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "demo=http://127.0.0.1:$((ETCD_PORT + 1))"

common=(--cluster-name "$CLUSTER" --store-backend etcdv3 --store-endpoints "http://127.0.0.1:$ETCD_PORT")
printf '%s\n' '{"initMode":"new","sleepInterval":"1s","failInterval":"5s","proxyCheckInterval":"1s","proxyTimeout":"5s","requestTimeout":"3s"}' >"$WORK/cluster-spec.json"
printf '%s' "$SU_PASSWORD" >"$WORK/su-password"
printf '%s' "$REPL_PASSWORD" >"$WORK/repl-password"
chmod 600 "$WORK/su-password" "$WORK/repl-password"

for s in 0 1; do
  start "sentinel$s" "$BIN/stolon-sentinel" "${common[@]}" --initial-cluster-spec "$WORK/cluster-spec.json"
done
for k in 0 1 2; do
  start "keeper$k" "$BIN/stolon-keeper" "${common[@]}" --uid "keeper$k" --data-dir "$WORK/keeper$k" \
    --pg-listen-address 127.0.0.1 --pg-port $((PG_BASE_PORT + k)) --pg-bin-path "$PG_BIN" \
    --pg-su-username "$SU" --pg-su-passwordfile "$WORK/su-password" \
    --pg-repl-username "$REPL" --pg-repl-passwordfile "$WORK/repl-password" \
    --metrics-listen-address "127.0.0.1:$((KEEPER_HTTP_BASE_PORT + k))"
done
start proxy "$BIN/stolon-proxy" "${common[@]}" --listen-address 127.0.0.1 --port "$PROXY_PORT"

echo "demo: waiting for the primary to be reachable through the proxy..."
for _ in $(seq 1 120); do
  if PGPASSWORD=$SU_PASSWORD PGCONNECT_TIMEOUT=2 psql -h 127.0.0.1 -p "$PROXY_PORT" -U "$SU" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 1
done
if [ -z "${ready:-}" ]; then
  echo "demo: the cluster did not come up within 2 minutes; see $WORK/logs" >&2
  exit 1
fi

cat <<MSG

stolon-rs demo cluster is up (etcd, 2 sentinels, 3 keepers, 1 proxy on 127.0.0.1).

  connect through the proxy:
    psql "postgres://$SU:$SU_PASSWORD@127.0.0.1:$PROXY_PORT/postgres"

  cluster status:
    $BIN/stolonctl ${common[*]} status

  what each keeper answers a load balancer (/primary, then /replica; also /health, /metrics):
    for p in $KEEPER_HTTP_BASE_PORT $((KEEPER_HTTP_BASE_PORT + 1)) $((KEEPER_HTTP_BASE_PORT + 2)); do curl -s 127.0.0.1:\$p/primary; curl -s 127.0.0.1:\$p/replica; done

  logs: $WORK/logs    keeper data: $WORK/keeper0..2
  keeper processes: $(for k in 0 1 2; do printf 'keeper%s=%s ' "$k" "${pids[$((3 + k))]}"; done)

Press Ctrl-C to stop everything.
MSG
wait
