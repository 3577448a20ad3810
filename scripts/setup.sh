#!/usr/bin/env bash
# Installs what stolon-rs needs to build, test and run its demo on Debian 12, then builds
# the Kubernetes API server and fetches helm once (scripts/kube-tools.sh).
# Idempotent: when everything is present it returns at once without touching apt.
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
# iproute2 and iptables: the partition tests give each part a network namespace of its own.
for pkg in postgresql-15 postgresql-client-15 etcd-server etcd-client protobuf-compiler libprotobuf-dev procps openssl unzip golang-go rsync jq iproute2 iptables; do
  have_pkg "$pkg" || need+=("$pkg")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
kube_tools() { bash "$(dirname "$0")/kube-tools.sh" >/dev/null; }
if [ ${#need[@]} -eq 0 ]; then
  kube_tools
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: missing packages: ${need[*]}; run this script as root (or install them yourself)" >&2
  exit 1
fi
echo "setup: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
# postgresql-common would otherwise create and start a default cluster on port 5432.
mkdir -p /etc/postgresql-common
if [ ! -f /etc/postgresql-common/createcluster.conf ] || ! grep -q '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
  echo "create_main_cluster = false" >> /etc/postgresql-common/createcluster.conf
fi
apt_retry() {
  for attempt in 1 2 3 4 5; do
    if "$@"; then return 0; fi
    echo "setup: '$*' failed (attempt $attempt), retrying in 5s" >&2
    sleep 5
  done
  return 1
}
apt_retry apt-get update -q
apt_retry apt-get install -y -q --no-install-recommends "${need[@]}"
kube_tools
