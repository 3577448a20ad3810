#!/usr/bin/env bash
# Runs the whole test suite: first the rules the code must follow (rustfmt, clippy with
# warnings denied and the engine's clock ban, rustdoc with warnings denied), then unit,
# property and integration tests (real etcd, kube-apiserver and PostgreSQL processes on
# 127.0.0.1, and the partition tests on network namespaces of their own, which need
# root), then the seed's walkthrough on a real single-node
# Kubernetes with the Helm chart and the image (scripts/e2e-k8s.sh on scripts/k8s-node.sh),
# and the deterministic simulation over its budget of seeds (crates/sim), alone on the CPU.
# Installs and builds what is missing first (scripts/setup.sh, once per machine).
# STOLON_TEST_K8S_NODE=0 leaves the single-node Kubernetes out.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --tests

# The rules first: a failure here stops the run (fix it, then run again).
echo "test: rules: cargo fmt --check, clippy -D warnings, rustdoc -D warnings"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked --quiet -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps --locked --quiet

# The integration tests start the daemons' binaries: build them first.
cargo build --bins --locked

e2e=0
if [ "${STOLON_TEST_K8S_NODE:-1}" != 0 ]; then
  # The image holds the release binaries.
  cargo build --release --bins --locked
  trap 'bash scripts/k8s-node.sh down >/dev/null 2>&1 || true' EXIT
  if bash scripts/k8s-node.sh up && bash scripts/e2e-k8s.sh; then
    echo "test: e2e-k8s passed"
  else
    e2e=1
    echo "test: e2e-k8s FAILED" >&2
  fi
  bash scripts/k8s-node.sh down || true
fi

# The simulation uses every core for a minute: on its own, so that it distorts none of the
# timings the real-cluster tests measure. It prints "N seeds, M violations".
sim=0
if ! cargo test --locked -p stolon-sim; then
  sim=1
  echo "test: the simulation found a violation, see above" >&2
fi

# The unit and integration tests last: their runner's summary closes the output.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --exclude stolon-sim --locked "$@"
else
  echo "test: cargo-nextest not found, using cargo test"
  cargo test --workspace --exclude stolon-sim --locked "$@"
fi
if [ "$sim" != 0 ]; then
  exit 1
fi
if [ "$e2e" != 0 ]; then
  echo "test: the Kubernetes walkthrough (scripts/e2e-k8s.sh) failed, see above" >&2
  exit 1
fi
