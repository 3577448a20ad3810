#!/usr/bin/env bash
# Starts a local stolon-rs cluster on 127.0.0.1: 2 sentinels, 3 keepers and 1 proxy over a
# store, prints how to connect, and runs until Ctrl-C, then stops everything it started.
# --store etcdv3 (the default): the store is a local etcd.
# --store kubernetes: the store is the Kubernetes API (ConfigMaps and Leases in one namespace)
#   of a local kube-apiserver (built once by scripts/setup.sh) over a local etcd of its own.
# Work directory: $STOLON_DEMO_DIR (default /tmp/stolon-demo); it is recreated at each run.
# STOLON_DEMO_PROFILE=debug uses a debug build (faster to build, what the tests use).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { # exit status
  echo "usage: $0 [--store etcdv3|kubernetes]" >&2
  exit "$1"
}
STORE=etcdv3
while [ $# -gt 0 ]; do
  case $1 in
    --store) [ $# -ge 2 ] || usage 2; STORE=$2; shift 2 ;;
    --store=*) STORE=${1#--store=}; shift ;;
    -h | --help) usage 0 ;;
    *) usage 2 ;;
  esac
done
case $STORE in etcdv3 | kubernetes) ;; *) usage 2 ;; esac

WORK=${STOLON_DEMO_DIR:-/tmp/stolon-demo}
KUBECONFIG_FILE=$WORK/kubeconfig
ETCD_PORT=${STOLON_DEMO_ETCD_PORT:-23790}
KUBE_PORT=${STOLON_DEMO_KUBE_PORT:-26443} # the Kubernetes API server's, with --store kubernetes
PROXY_PORT=${STOLON_DEMO_PROXY_PORT:-25432}
PG_BASE_PORT=${STOLON_DEMO_PG_BASE_PORT:-25433}
KEEPER_HTTP_BASE_PORT=${STOLON_DEMO_KEEPER_HTTP_BASE_PORT:-25533}
CLUSTER=demo
NAMESPACE=stolon-demo
SU=stolon
SU_PASSWORD=stolon-demo-password
REPL=repluser
REPL_PASSWORD=stolon-demo-repl-password

# Only what this store needs: the Kubernetes API server is built for --store kubernetes only.
if [ "$STORE" = kubernetes ]; then bash scripts/setup.sh --kubernetes; else bash scripts/setup.sh; fi
# STOLON_DEMO_PROFILE=debug reuses the test build instead of a release build.
PROFILE=${STOLON_DEMO_PROFILE:-release}
echo "demo: building the four programs ($PROFILE; a few minutes the first time)..."
programs=(-p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolon-ctl)
if [ "$PROFILE" = release ]; then
  cargo build --release --locked "${programs[@]}"
else
  cargo build --locked "${programs[@]}"
fi
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
store_pids=() # the store's servers: the first of pids
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping..."
  # The programs first, all at once, so that their last writes reach the store; then the
  # store's servers, the last started first (the API server before its etcd).
  local daemons=("${pids[@]:${#store_pids[@]}}")
  for pid in "${daemons[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${daemons[@]}"; do wait "$pid" 2>/dev/null || true; done
  for ((i = ${#store_pids[@]} - 1; i >= 0; i--)); do
    kill -TERM "${store_pids[$i]}" 2>/dev/null || true
    wait "${store_pids[$i]}" 2>/dev/null || true
  done
  echo "demo: stopped; logs and data are in $WORK"
}
trap cleanup INT TERM EXIT

start() { # name, command...
  local name=$1; shift
  "$@" >"$WORK/logs/$name.log" 2>&1 &
  pids+=($!)
}

# The Kubernetes store's credentials, as a cluster would have them: a CA, the API server's
# certificate it signs, service-account signing keys, and a random bearer token for an
# administrator, in $WORK/kube; and the kubeconfig the programs use, whose context's
# namespace is the cluster's.
make_kube_credentials() {
  local dir=$WORK/kube
  mkdir -p "$dir"
  chmod 700 "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 30 -subj "/CN=stolon-rs demo CA"
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=kube-apiserver
    printf '%s\n' basicConstraints=CA:FALSE keyUsage=digitalSignature,keyEncipherment extendedKeyUsage=serverAuth \
      subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc >server.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 30 -extfile server.ext
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$WORK/logs/openssl.log" 2>&1 || {
    echo "demo: making the API server's certificates failed; see $WORK/logs/openssl.log" >&2
    exit 1
  }
  local token
  token=$(openssl rand -hex 24)
  printf '%s,admin,admin,"system:masters"\n' "$token" >"$dir/tokens.csv"
  (umask 077 && cat >"$KUBECONFIG_FILE") <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: stolon-demo
  cluster:
    server: https://127.0.0.1:$KUBE_PORT
    certificate-authority-data: $(base64 -w 0 "$dir/ca.crt")
contexts:
- name: stolon-demo
  context:
    cluster: stolon-demo
    user: admin
    namespace: $NAMESPACE
current-context: stolon-demo
users:
- name: admin
  user:
    token: $token
KUBECONFIG
}

start etcd etcd --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
  --initial-cluster "demo=http://127.0.0.1:$((ETCD_PORT + 1))"
store_pids+=("${pids[-1]}")

if [ "$STORE" = kubernetes ]; then
  KUBE_BIN=$(bash scripts/kube-tools.sh | tail -n 1)
  KUBECTL=$KUBE_BIN/kubectl
  make_kube_credentials
  # No controllers, scheduler or kubelet: the store only needs objects stored and watched.
  # Nothing creates the default service account the ServiceAccount admission plugin wants.
  start kube-apiserver "$KUBE_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --etcd-prefix=/kubernetes --bind-address=127.0.0.1 --advertise-address=127.0.0.1 \
    --secure-port="$KUBE_PORT" --insecure-port=0 \
    --tls-cert-file="$WORK/kube/server.crt" --tls-private-key-file="$WORK/kube/server.key" \
    --token-auth-file="$WORK/kube/tokens.csv" --authorization-mode=RBAC \
    --service-account-key-file="$WORK/kube/sa.pub" --service-account-signing-key-file="$WORK/kube/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/24 \
    --cert-dir="$WORK/kube/certs" --disable-admission-plugins=ServiceAccount --v=0
  apiserver=${pids[-1]}
  store_pids+=("$apiserver")
  echo "demo: waiting for the Kubernetes API server..."
  for _ in $(seq 1 120); do
    kill -0 "$apiserver" 2>/dev/null || break
    if [ "$("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" get --raw /readyz 2>/dev/null)" = ok ]; then
      kube_ready=1
      break
    fi
    sleep 0.5
  done
  if [ -z "${kube_ready:-}" ]; then
    echo "demo: the Kubernetes API server was not ready within 60 s; see $WORK/logs/kube-apiserver.log" >&2
    exit 1
  fi
  "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" create namespace "$NAMESPACE" >/dev/null
  # The programs find the API server and the namespace (the context's) as kubectl does.
  export KUBECONFIG=$KUBECONFIG_FILE
  common=(--cluster-name "$CLUSTER" --store-backend kubernetes --kube-resource-kind configmap)
  ctl=("${common[@]}" --kubeconfig "$KUBECONFIG_FILE" --kube-namespace "$NAMESPACE")
  store_desc="Kubernetes API server over etcd"
  store_help="  the store's objects:
    $KUBECTL --kubeconfig $KUBECONFIG_FILE get configmap,lease -n $NAMESPACE

"
else
  common=(--cluster-name "$CLUSTER" --store-backend etcdv3 --store-endpoints "http://127.0.0.1:$ETCD_PORT")
  ctl=("${common[@]}")
  store_desc=etcd
  store_help=
fi
printf '%s\n' '{"initMode":"new","sleepInterval":"1s","failInterval":"5s","proxyCheckInterval":"1s","proxyTimeout":"5s","requestTimeout":"3s"}' >"$WORK/cluster-spec.json"
printf '%s' "$SU_PASSWORD" >"$WORK/su-password"
printf '%s' "$REPL_PASSWORD" >"$WORK/repl-password"
chmod 600 "$WORK/su-password" "$WORK/repl-password"

for s in 0 1; do
  start "sentinel$s" "$BIN/stolon-sentinel" "${common[@]}" --initial-cluster-spec "$WORK/cluster-spec.json"
done
keeper_pids=()
for k in 0 1 2; do
  start "keeper$k" "$BIN/stolon-keeper" "${common[@]}" --uid "keeper$k" --data-dir "$WORK/keeper$k" \
    --pg-listen-address 127.0.0.1 --pg-port $((PG_BASE_PORT + k)) --pg-bin-path "$PG_BIN" \
    --pg-su-username "$SU" --pg-su-passwordfile "$WORK/su-password" \
    --pg-repl-username "$REPL" --pg-repl-passwordfile "$WORK/repl-password" \
    --metrics-listen-address "127.0.0.1:$((KEEPER_HTTP_BASE_PORT + k))"
  keeper_pids+=("${pids[-1]}")
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

stolon-rs demo cluster is up ($store_desc, 2 sentinels, 3 keepers, 1 proxy on 127.0.0.1).

  connect through the proxy:
    psql "postgres://$SU:$SU_PASSWORD@127.0.0.1:$PROXY_PORT/postgres"

  cluster status:
    $BIN/stolonctl ${ctl[*]} status

${store_help}  what each keeper answers a load balancer (/primary, then /replica; also /health, /metrics):
    for p in $KEEPER_HTTP_BASE_PORT $((KEEPER_HTTP_BASE_PORT + 1)) $((KEEPER_HTTP_BASE_PORT + 2)); do curl -s 127.0.0.1:\$p/primary; curl -s 127.0.0.1:\$p/replica; done

  logs: $WORK/logs    keeper data: $WORK/keeper0..2
  keeper processes: $(for k in 0 1 2; do printf 'keeper%s=%s ' "$k" "${keeper_pids[$k]}"; done)

Press Ctrl-C to stop everything.
MSG
wait
