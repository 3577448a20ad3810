#!/usr/bin/env bash
# The seed's walkthrough on a real single-node Kubernetes (scripts/k8s-node.sh up), with the
# seed's commands: install the Helm chart with the Kubernetes store, open a psql session
# through the proxy Service from a client pod, delete the keeper StatefulSet with
# --cascade=false and then the primary keeper's pod, check the leader sentinel's four lines
# and that the open session fails once, reconnects and sees its row, recreate the
# StatefulSet and see the keeper rejoin on its volume as a standby.
#
# Variants, each on a fresh install:
#   async-delete  asynchronous replication, the primary's pod deleted politely;
#   async-kill    asynchronous replication, the primary keeper's container SIGKILLed through
#                 the container runtime, and again whenever the kubelet restarts it, until the
#                 failover is done (a node lost, then back: its keeper rejoins as a standby);
#   sync-delete   synchronous replication, the pod deleted; the writer pod that counts
#                 acknowledged commits in every variant may lose none here;
#   sync-kill     synchronous replication, the keeper SIGKILLed and kept down.
# Each prints its steps and the time from the fault to the first write acknowledged through
# the Service.
#
# Usage: scripts/e2e-k8s.sh [VARIANT...]    (default: all four)
# Needs a node from scripts/k8s-node.sh up (its admin kubeconfig and storage class).
set -euo pipefail
cd "$(dirname "$0")/.."

state=${STOLON_K8S_NODE_DIR:-/var/lib/stolon-k8s-node}
export KUBECONFIG=${STOLON_E2E_KUBECONFIG:-$state/admin.kubeconfig}
storage_class=${STOLON_E2E_STORAGE_CLASS:-local-storage}
containerd_socket=$state/run/containerd.sock
PATH="$(bash scripts/kube-tools.sh | tail -n 1):$PATH"

ns=test
fullname=stolon-stolon
service=$fullname-proxy.$ns.svc.cluster.local
image=stolon-rs:0.1.0
ctl=(stolonctl --cluster-name "$fullname" --store-backend kubernetes --kube-resource-kind configmap)
seed_lines=("no keeper info available" "master db is failed"
  "trying to find a standby to replace failed master" "electing db as the new master")

started=$SECONDS
# Steps print here, also from inside retry, which silences what it runs.
exec 3>&1
variant=setup
step() { echo "e2e-k8s: [$((SECONDS - started))s] $variant: $*"; }
now_ms() { date +%s%3N; }

diagnose() {
  echo "---- pods" >&2
  kubectl get pods -n "$ns" -o wide >&2 || true
  for selector in component=stolon-sentinel component=stolon-keeper component=stolon-proxy; do
    echo "---- logs $selector" >&2
    kubectl logs -n "$ns" -l "$selector" --prefix --tail=40 >&2 || true
  done
}
fail() {
  echo "e2e-k8s: FAILED in $variant: $*" >&2
  diagnose
  exit 1
}

# Runs "$@" until it succeeds, for at most $1 seconds.
retry() { # seconds description command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "$what: not within the time allowed"
    sleep 1
  done
}

stolonctl_in_cluster() { kubectl exec -n "$ns" "deploy/$fullname-sentinel" -- "${ctl[@]}" "$@"; }
status_json() { stolonctl_in_cluster status --format json; }
primary_keeper() { status_json | jq -er '.cluster.master_keeper_uid // empty'; }
# Every keeper healthy, a primary and all others streaming standbys.
cluster_settled() {
  status_json | jq -e --argjson n "$1" '
    [.keepers[] | select(.healthy and .pg_healthy)] as $ok
    | ($ok | length) == $n
      and ([$ok[] | select(.role == "master")] | length) == 1
      and ([$ok[] | select(.role == "standby")] | length) == $n - 1
      and .cluster.master_keeper_uid != null'
}
pod_of() { echo "$fullname-keeper-${1#keeper}"; }
password() { kubectl get secret -n "$ns" "$fullname" -o jsonpath='{.data.pg_su_password}' | base64 -d; }
in_client() { kubectl exec -n "$ns" client -- env PGPASSWORD="$su_password" PGCONNECT_TIMEOUT=3 "$@"; }
sql() { in_client psql -h "$service" -U stolon -d postgres -Atqc "$1"; }

install() { # extra helm flags...
  step "helm install stolon deploy/helm/stolon -n $ns --create-namespace --set store.backend=kubernetes --set persistence.enabled=true --set persistence.storageClassName=$storage_class $*"
  helm install stolon deploy/helm/stolon -n "$ns" --create-namespace \
    --set store.backend=kubernetes --set persistence.enabled=true \
    --set persistence.storageClassName="$storage_class" "$@" --wait --timeout 6m >/dev/null ||
    fail "helm install"
  # helm returns once its post-install hook, the init Job, succeeded.
  kubectl wait -n "$ns" --for=condition=Ready pod -l 'app.kubernetes.io/instance=stolon,component!=stolon-init' --timeout=300s >/dev/null ||
    fail "pods not Ready"
  step "all pods Ready, the init Job done"
  kubectl run -n "$ns" client --image="$image" --image-pull-policy=Never --restart=Never \
    --command -- sleep infinity >/dev/null
  kubectl wait -n "$ns" --for=condition=Ready pod/client --timeout=120s >/dev/null || fail "client pod not Ready"
  su_password=$(password)
  retry 180 "three keepers settled" cluster_settled 3
  step "3 keepers: a primary and 2 streaming standbys"
}

uninstall() {
  step "cleaning up"
  helm uninstall stolon -n "$ns" --wait --timeout 3m >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" --wait=true --timeout=180s >/dev/null 2>&1 ||
    fail "namespace $ns not deleted"
}

# The open psql session: interactive (a terminal, through script(1) and kubectl exec -t), so
# that psql resets a lost connection as it does for a person typing.
open_session() {
  coproc SESSION {
    script -qfec "kubectl exec -it -n $ns client -- env PGPASSWORD=$su_password psql -P pager=off -h $service -U stolon -d postgres" /dev/null 2>&1
  }
  session_marker=0
  session_query 'select 1' >/dev/null || fail "the psql session did not open"
}

# Sends one statement to the open session; prints what psql answered to it. The answer ends
# at a marker query whose result (7000 + n) cannot appear in the echo of its input.
session_query() {
  session_marker=$((session_marker + 1))
  local want=$((7000 + session_marker)) line answer=
  printf '%s;\nselect 7000 + %d;\n' "$1" "$session_marker" >&"${SESSION[1]}"
  while IFS= read -r -t 60 line <&"${SESSION[0]}"; do
    line=${line//$'\r'/}
    [[ $line =~ (^|[^0-9+])$want([^0-9]|$) && $line != *"7000 +"* ]] && { printf '%s' "$answer"; return 0; }
    answer+="$line"$'\n'
  done
  printf '%s' "$answer"
  return 1
}

close_session() {
  printf '\\q\n' >&"${SESSION[1]}" 2>/dev/null || true
  wait "$SESSION_PID" 2>/dev/null || true
}

# A writer in the client pod: one insert per connection through the Service every 100 ms,
# each acknowledged one logged with the time it was acknowledged and the address of the
# PostgreSQL that acknowledged it.
start_writer() {
  sql "create table writes (id int primary key)" >/dev/null
  kubectl exec -n "$ns" client -- bash -c "
    export PGPASSWORD='$su_password' PGCONNECT_TIMEOUT=2
    i=0
    while [ ! -e /tmp/stop-writer ]; do
      i=\$((i + 1))
      if by=\$(psql -h $service -U stolon -d postgres -Atqc \"insert into writes values (\$i) returning host(inet_server_addr())\" 2>/dev/null); then
        echo \"ack \$i \$(date +%s%3N) \$by\" >>/tmp/acks
      fi
      sleep 0.1
    done" >/dev/null 2>&1 &
  writer_pid=$!
}
stop_writer() {
  in_client touch /tmp/stop-writer
  wait "$writer_pid" 2>/dev/null || true
}
acks() { in_client cat /tmp/acks 2>/dev/null || true; }
# The first write acknowledged after time $1 by another PostgreSQL than the one at $2.
first_ack_after() { acks | awk -v t="$1" -v old="$2" '$3 > t && $4 != old { print $3; exit }'; }
acked_after() { [ -n "$(first_ack_after "$1" "$2")" ]; }

# A sentinel's log holds these lines, in this order.
check_sentinel_lines() { # line...
  local pod log at=0 line rest
  for pod in $(kubectl get pods -n "$ns" -l component=stolon-sentinel -o name); do
    log=$(kubectl logs -n "$ns" "$pod")
    rest=$log
    for line in "$@"; do
      [[ $rest == *"$line"* ]] || continue 2
      rest=${rest#*"$line"}
    done
    echo "e2e-k8s: [$((SECONDS - started))s] $variant: leader sentinel ${pod#pod/} logged, in order: $(printf "'%s' " "$@")" >&3
    at=1
    break
  done
  [ "$at" = 1 ]
}

# SIGKILL of the keeper container of pod $1 (tini, so every process in it, PostgreSQL
# included) through containerd, repeated whenever the kubelet restarts it, until the file $2
# exists: on a single node the kubelet cannot be lost with the pod, so the pod stays lost
# for as long as the test says. The pod's sandbox, and so its address, stays.
keep_killing() { # pod stop-file
  local id
  until [ -e "$2" ]; do
    # One filter, its conditions joined by commas (separate filters would be or'ed).
    for id in $(ctr --address "$containerd_socket" -n k8s.io containers ls -q \
      "labels.\"io.kubernetes.pod.name\"==$1,labels.\"io.kubernetes.container.name\"==keeper"); do
      ctr --address "$containerd_socket" -n k8s.io tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.2
  done
}

run_variant() { # name
  variant=$1
  local sync=false fault=delete
  case $variant in
    async-delete) ;;
    async-kill) fault=kill ;;
    sync-delete) sync=true ;;
    sync-kill) sync=true fault=kill ;;
    *) echo "e2e-k8s: unknown variant $variant (async-delete, async-kill, sync-delete, sync-kill)" >&2; exit 2 ;;
  esac
  local t0=$SECONDS
  if [ "$sync" = true ]; then
    install --set clusterSpec.synchronousReplication=true --set clusterSpec.minSynchronousStandbys=1 \
      --set clusterSpec.maxSynchronousStandbys=1
  else
    install
  fi

  step "psql to $service:5432 from the client pod; the session stays open"
  open_session
  session_query "create table test (id int primary key not null, value text not null)" >/dev/null
  session_query "insert into test values (1, 'value1')" >/dev/null
  [[ $(session_query "select * from test") == *"value1"* ]] || fail "the row is not in the open session"
  start_writer
  sleep 3

  local primary pod pvc_uid old_ip
  primary=$(primary_keeper) || fail "no primary"
  pod=$(pod_of "$primary")
  pvc_uid=$(kubectl get pvc -n "$ns" "stolon-data-$pod" -o jsonpath='{.metadata.uid}')
  old_ip=$(kubectl get pod -n "$ns" "$pod" -o jsonpath='{.status.podIP}')
  step "the primary is $primary (pod $pod)"
  local fault_ms killer
  if [ "$fault" = delete ]; then
    step "kubectl delete statefulset $fullname-keeper --cascade=false"
    kubectl delete statefulset -n "$ns" "$fullname-keeper" --cascade=false >/dev/null 2>&1 ||
      fail "deleting the StatefulSet"
    step "kubectl delete pod $pod"
    fault_ms=$(now_ms)
    kubectl delete pod -n "$ns" "$pod" --wait=false >/dev/null
  else
    step "SIGKILL of pod $pod's keeper container through containerd, kept down until the failover"
    rm -f "$state/e2e-revive"
    fault_ms=$(now_ms)
    keep_killing "$pod" "$state/e2e-revive" &
    killer=$!
  fi

  local first
  retry 120 "a write acknowledged through the Service by a new primary" acked_after "$fault_ms" "$old_ip"
  first=$(first_ack_after "$fault_ms" "$old_ip")
  step "fault -> first write acknowledged through the Service by the new primary: $(((first - fault_ms) / 1000)).$(printf '%03d' $(((first - fault_ms) % 1000))) s"
  if [ "$fault" = delete ]; then
    retry 30 "the leader sentinel's four lines" check_sentinel_lines "${seed_lines[@]}"
  else
    # A killed keeper's info stays until its Lease expires, which may come after the
    # failInterval that fails the primary: 'no keeper info available' may follow the rest.
    retry 30 "the leader sentinel's failover lines" check_sentinel_lines "${seed_lines[@]:1}"
    retry 60 "the leader sentinel's '${seed_lines[0]}'" check_sentinel_lines "${seed_lines[0]}"
  fi

  local answer
  answer=$(session_query "select * from test" || true)
  [[ $answer == *"connection to the server was lost"* || $answer == *"terminating connection"* ||
    $answer == *"server closed the connection"* ]] || fail "the open session did not see its connection cut: $answer"
  [[ $answer == *"Succeeded"* ]] || [[ $(session_query "select * from test") == *"value1"* ]] ||
    fail "the session did not reconnect: $answer"
  [[ $(session_query "select * from test") == *"value1"* ]] || fail "the reconnected session does not see the row"
  step "the open session failed once: $(grep -E 'lost|closed|terminat|reset' <<<"$answer" | tr -s ' \n' ' ')"
  step "it reconnected and sees its row"
  [[ $(session_query "insert into test values (2, 'value2') returning id") == *2* ]] ||
    fail "a new write in the session failed"
  step "new writes succeed"
  close_session

  local new_primary
  new_primary=$(primary_keeper)
  [ "$new_primary" != "$primary" ] || fail "the primary did not move"
  step "$new_primary is the new primary"

  if [ "$fault" = delete ]; then
    step "helm upgrade --reuse-values recreates the StatefulSet"
    helm upgrade stolon deploy/helm/stolon -n "$ns" --reuse-values >/dev/null || fail "helm upgrade"
  else
    step "the lost pod's keeper may start again"
    touch "$state/e2e-revive"
    wait "$killer"
  fi
  retry 240 "$primary back as a standby" cluster_settled 3
  [ "$(kubectl get pvc -n "$ns" "stolon-data-$pod" -o jsonpath='{.metadata.uid}')" = "$pvc_uid" ] ||
    fail "$pod came back on another volume"
  step "$primary rejoined as a standby, on its own volume"

  stop_writer
  local acked lost
  acked=$(acks | awk '{ print $2 }')
  lost=$(comm -23 <(sort -n <<<"$acked") <(sql "select id from writes" | sort -n) | wc -l)
  step "writer: $(wc -l <<<"$acked") acknowledged writes, $lost lost"
  if [ "$sync" = true ] && [ "$lost" -ne 0 ]; then
    fail "$lost acknowledged writes lost in synchronous mode"
  fi
  step "done in $((SECONDS - t0)) s"
  uninstall
}

[ -r "$KUBECONFIG" ] || { echo "e2e-k8s: no node (no $KUBECONFIG): run scripts/k8s-node.sh up first" >&2; exit 1; }
kubectl get --raw /readyz >/dev/null || { echo "e2e-k8s: the node's API server does not answer" >&2; exit 1; }
if kubectl get namespace "$ns" >/dev/null 2>&1; then
  echo "e2e-k8s: namespace $ns exists: remove it first (kubectl delete namespace $ns)" >&2
  exit 1
fi
trap 'touch "$state/e2e-revive"; kubectl delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(async-delete async-kill sync-delete sync-kill)
for v in "${variants[@]}"; do run_variant "$v"; done
variant=all
step "passed: ${variants[*]}"
