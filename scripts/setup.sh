#!/usr/bin/env bash
# Installs, once per machine, what stolon-rs needs on Debian 12, and no more than asked for:
#   scripts/setup.sh              the demo on etcd: PostgreSQL, etcd, and protoc for the build
#   scripts/setup.sh --kubernetes also the Kubernetes API server, helm and kubectl
#                                 (scripts/kube-tools.sh builds them from Debian's source
#                                 package: about 10 minutes on 2 cores, once)
#   scripts/setup.sh --tests      everything the test suite uses: the above, and iproute2 and
#                                 iptables for the partition tests
# Idempotent: when everything is present it returns at once without touching apt.
set -euo pipefail

kubernetes=false
tests=false
for arg in "$@"; do
  case $arg in
    --kubernetes) kubernetes=true ;;
    --tests) kubernetes=true tests=true ;;
    *) echo "usage: $0 [--kubernetes|--tests]" >&2; exit 2 ;;
  esac
done

packages=(postgresql-15 postgresql-client-15 etcd-server etcd-client protobuf-compiler libprotobuf-dev procps openssl)
# kube-tools.sh installs its own build dependencies; unzip unpacks helm and kubectl.
$kubernetes && packages+=(unzip)
# The partition tests give each part a network namespace of its own.
$tests && packages+=(iproute2 iptables)

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for pkg in "${packages[@]}"; do
  have_pkg "$pkg" || need+=("$pkg")
done
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo is not on PATH; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
kube_tools() {
  if $kubernetes; then bash "$(dirname "$0")/kube-tools.sh" >/dev/null; fi
}
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
