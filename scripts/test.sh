#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests (real etcd and
# PostgreSQL processes on 127.0.0.1). Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The integration tests start the daemons' binaries: build them first.
cargo build --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked "$@"
else
  echo "test: cargo-nextest not found, using cargo test"
  cargo test --workspace --locked "$@"
fi
