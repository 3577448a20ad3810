#!/usr/bin/env bash
# The fault campaign: seeded schedules of partitions, freezes, kills, store and disk faults on
# a cluster whose every part runs on a network namespace of its own, each run ending with the
# checker (lost acknowledged commits, split brain, unavailability, convergence).
#   scripts/chaos.sh [--seed N] [--runs K] [--minutes M] [--sync|--async]
# One JSON line per run on stdout, then a table and a summary; a run replays exactly with
# `--seed <its seed> --runs 1`. Needs root (namespaces, iptables, tmpfs mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --tests
cargo build --release --bins --locked
exec target/release/stolon-bench chaos "$@"
