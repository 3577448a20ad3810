#!/usr/bin/env bash
# Shows that the simulator catches bugs planted on purpose in the engine: each patch in
# crates/sim/planted/ is applied to a scratch copy of the repository, the simulator runs
# seeds until the first violation (at most the CI budget), and the script reports the seed
# that caught it. It fails if a bug goes uncaught or a patch no longer applies.
#
#   scripts/sim-planted-bugs.sh [SEEDS]      (default 2000)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
seeds="${1:-2000}"
scratch="$(mktemp -d /tmp/stolon-planted-XXXXXX)"
# One target directory for every patch: only the engine and the simulator rebuild.
target="${CARGO_TARGET_DIR:-$root/target}/planted"
trap 'git -C "$root" worktree remove --force "$scratch/repo" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT

git -C "$root" worktree add --detach --quiet "$scratch/repo" HEAD
caught=0
missed=0
for patch in "$root"/crates/sim/planted/*.patch; do
    name="$(basename "$patch" .patch)"
    git -C "$scratch/repo" checkout --quiet -- .
    if ! git -C "$scratch/repo" apply "$patch"; then
        echo "planted bug $name: the patch no longer applies to the engine: update it" >&2
        exit 2
    fi
    echo "planted bug $name: building the simulator with it..."
    if ! (cd "$scratch/repo" && CARGO_TARGET_DIR="$target" cargo build -p stolon-sim --tests) >"$scratch/build.log" 2>&1; then
        cat "$scratch/build.log" >&2
        echo "planted bug $name: the simulator does not build with it" >&2
        exit 2
    fi
    binary="$(ls -t "$target"/debug/deps/seeds-* | grep -v '\.d$' | head -1)"
    if out="$("$binary" --seeds "$seeds" --until-violation 2>&1)"; then
        echo "planted bug $name: NOT caught in $seeds seeds"
        missed=$((missed + 1))
    else
        echo "planted bug $name: caught: $(grep -m1 '^seed ' <<<"$out")"
        caught=$((caught + 1))
    fi
done
echo "$caught planted bugs caught, $missed missed"
[ "$missed" -eq 0 ]
