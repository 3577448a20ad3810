#!/usr/bin/env bash
# Builds the stolon-rs image from deploy/Dockerfile without a container daemon or a registry:
# Debian's buildah builds it on a Debian 12 base made with debootstrap (cached), and the
# image is written as a docker-archive tar that `docker load`, `ctr images import` or
# `kind load image-archive` take.
#
#   scripts/build-image.sh [OUT.tar]     (default: $STOLON_CACHE/image/stolon-rs-0.1.0.tar)
#
# Needs root and the release binaries (cargo build --release --bins). Prints the tar's path
# on its last line. Rebuilds only when the binaries or the Dockerfile changed.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${STOLON_CACHE:-/var/cache/stolon-rs}/image
tag=stolon-rs:0.1.0
out=${1:-$cache/stolon-rs-0.1.0.tar}
binaries=(stolon-keeper stolon-sentinel stolon-proxy stolonctl)
# buildah's own storage, apart from any other user of it on the machine.
export STORAGE_DRIVER=vfs CONTAINERS_STORAGE_CONF=$cache/storage.conf

log() { echo "build-image: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "needs root (buildah, debootstrap)"; exit 1; }
for b in "${binaries[@]}"; do
  [ -x "target/release/$b" ] || { log "target/release/$b is missing: cargo build --release --bins first"; exit 1; }
done
mkdir -p "$cache"
# Bump when the base image is made differently.
base_recipe=slim-2
key=$( (echo "$base_recipe"; cat deploy/Dockerfile "${binaries[@]/#/target/release/}") | sha256sum | cut -c1-16)
if [ -s "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  echo "$out"
  exit 0
fi

need=()
for pkg in buildah debootstrap; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
cat >"$cache/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$cache/storage"
runroot = "$cache/run"
CONF

# The Dockerfile's base, debian:bookworm-slim, made here instead of pulled.
if [ "$(cat "$cache/base.recipe" 2>/dev/null)" != "$base_recipe" ]; then
  buildah rmi -f localhost/debian:bookworm-slim >/dev/null 2>&1 || true
fi
if ! buildah images -q localhost/debian:bookworm-slim 2>/dev/null | grep -q .; then
  rootfs=$cache/bookworm-rootfs
  if [ ! -e "$rootfs/.complete" ]; then
    log "making a Debian 12 base with debootstrap (once)"
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 || {
      log "debootstrap failed; see $cache/debootstrap.log"
      exit 1
    }
    touch "$rootfs/.complete"
  fi
  # What makes Docker's debian:bookworm-slim slim: apt keeps no packages or caches, and
  # dpkg installs no documentation, manual pages or translations.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
DPKG
  rm -f "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
  container=$(buildah from scratch)
  mount=$(buildah mount "$container")
  tar -C "$rootfs" --exclude=./.complete -cf - . | tar -C "$mount" -xf -
  buildah umount "$container" >/dev/null
  buildah commit -q "$container" localhost/debian:bookworm-slim >/dev/null
  echo "$base_recipe" >"$cache/base.recipe"
  buildah rm "$container" >/dev/null
fi

log "building $tag from deploy/Dockerfile"
buildah bud -q --pull=never --network host --isolation chroot -f deploy/Dockerfile \
  -t "localhost/$tag" . >"$cache/build.log" 2>&1 || {
  log "the build failed; the last lines of $cache/build.log:"
  tail -20 "$cache/build.log" >&2
  exit 1
}
rm -f "$out"
buildah push -q "localhost/$tag" "docker-archive:$out:$tag" >/dev/null
echo "$key" >"$out.key"
# Older builds of the image only take room.
buildah rmi --prune >/dev/null 2>&1 || true
log "wrote $out ($(du -h "$out" | cut -f1))"
echo "$out"
