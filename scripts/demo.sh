#!/usr/bin/env bash
# Starts a local stolon-rs cluster on 127.0.0.1: 2 sentinels, 3 keepers and 1 proxy over a
# store, prints how to connect, and runs until Ctrl-C, then stops everything it started.
# --store etcdv3 (the default): the store is a local etcd.
# --store kubernetes: the store is the Kubernetes API (ConfigMaps and Leases) of a local
#   kube-apiserver (built once by scripts/setup.sh --kubernetes) over a local etcd.
# The cluster is brought up as the tests bring theirs up: `stolon-bench demo` (bench/src/demo.rs
# says which directory and ports, and the variables that change them).
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

# Only what this store needs: the Kubernetes API server is built for --store kubernetes only.
if [ "$STORE" = kubernetes ]; then bash scripts/setup.sh --kubernetes; else bash scripts/setup.sh; fi
PROFILE=${STOLON_DEMO_PROFILE:-release}
echo "demo: building the four programs and the demo ($PROFILE; a few minutes the first time)..."
packages=(-p stolon-keeper -p stolon-sentinel -p stolon-proxy -p stolon-ctl -p stolon-bench)
if [ "$PROFILE" = release ]; then
  cargo build --release --locked "${packages[@]}"
else
  cargo build --locked "${packages[@]}"
fi
exec "target/$PROFILE/stolon-bench" demo --store "$STORE"
