#!/usr/bin/env bash
# Builds the Debian package of stolon-rs with Debian's own dpkg-deb: the four programs,
# systemd units (stolon-keeper@<uid>, stolon-sentinel, stolon-proxy) with an example
# environment file each, manual pages and bash/zsh/fish completions generated from the
# programs' command lines (stolon-dist).
#
#   scripts/package-deb.sh [--bin-dir DIR] [--out DIR] [--compression xz|gzip|none]
#
# --bin-dir: take the programs from DIR instead of building release binaries.
# --out: where the .deb goes (default target/deb). Prints the package's path last.
# --compression: dpkg-deb's (default xz; the tests package debug builds with none).
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=""
out=target/deb
compression=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --compression) compression="$2"; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR] [--compression xz|gzip|none]" >&2; exit 2 ;;
  esac
done
programs=(stolon-keeper stolon-sentinel stolon-proxy stolonctl)
if [ -z "$bin_dir" ]; then
  echo "package-deb: building the release binaries" >&2
  cargo build --release --locked --bins >&2
  bin_dir=target/release
fi
for p in "${programs[@]}" stolon-dist; do
  [ -x "$bin_dir/$p" ] || { echo "package-deb: no $bin_dir/$p (build it first)" >&2; exit 1; }
done

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
name=stolon-rs
mkdir -p "$out"
stage=$(mktemp -d "${TMPDIR:-/tmp}/stolon-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root="$stage/${name}_${version}_${arch}"

install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/stolon" \
  "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d" \
  "$root/usr/share/doc/$name/examples"
for p in "${programs[@]}"; do
  install -m 0755 "$bin_dir/$p" "$root/usr/bin/$p"
done
install -m 0644 deploy/systemd/*.service "$root/lib/systemd/system/"
install -m 0644 deploy/systemd/sentinel.env "$root/etc/stolon/sentinel.env"
install -m 0644 deploy/systemd/proxy.env "$root/etc/stolon/proxy.env"
install -m 0644 deploy/systemd/keeper.env "$root/usr/share/doc/$name/examples/keeper.env"

generated="$stage/generated"
"$bin_dir/stolon-dist" man "$generated/man" >/dev/null
"$bin_dir/stolon-dist" completions "$generated/completions" >/dev/null
for page in "$generated"/man/*.1; do
  gzip -9n -c "$page" > "$root/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$generated"/completions/bash/* "$root/usr/share/bash-completion/completions/"
install -m 0644 "$generated"/completions/zsh/* "$root/usr/share/zsh/vendor-completions/"
install -m 0644 "$generated"/completions/fish/* "$root/usr/share/fish/vendor_completions.d/"

cat > "$root/usr/share/doc/$name/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: stolon-rs
License: Apache-2.0

Files: *
License: Apache-2.0
 On Debian systems the full text of the license is in
 /usr/share/common-licenses/Apache-2.0.
EOF

# The newest glibc symbol version the programs use is the least libc6 they run on.
glibc=$(for p in "${programs[@]}"; do objdump -T "$bin_dir/$p"; done \
  | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -1)
size=$(du -sk "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<EOF
Package: $name
Version: $version
Architecture: $arch
Maintainer: stolon-rs developers <stolon-rs@localhost>
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1, postgresql-common
Recommends: postgresql (>= 13)
Suggests: etcd-server
Section: database
Priority: optional
Description: PostgreSQL high availability in the Stolon architecture
 stolon-keeper manages one PostgreSQL instance, stolon-sentinel watches the
 keepers and drives failover and switchover, stolon-proxy routes clients to the
 primary only, and stolonctl is the operator's command line. The store is etcd
 or the Kubernetes API. Systemd units: stolon-keeper@<uid>, stolon-sentinel,
 stolon-proxy, each configured by an environment file in /etc/stolon.
EOF
cat > "$root/DEBIAN/conffiles" <<EOF
/etc/stolon/sentinel.env
/etc/stolon/proxy.env
EOF
cat > "$root/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  # The keepers run as postgres (postgresql-common creates it); their secrets live here.
  install -d -m 0750 -o root -g postgres /etc/stolon/secrets
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
  fi
fi
EOF
cat > "$root/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
  rmdir /etc/stolon/secrets 2>/dev/null || true
fi
EOF
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/postrm"

deb="$out/${name}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Z"$compression" --build "$root" "$deb" >&2
echo "$deb"
