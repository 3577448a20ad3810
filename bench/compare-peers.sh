#!/usr/bin/env bash
# compare-peers.sh PEERS_DIR [RUNS]: stolon-rs and Patroni + HAProxy measured in the same
# run with matching timings, side by side, with their ratios (a table and one JSON line).
#
# PEERS_DIR holds scripts that start etcd, 3 Patroni nodes and HAProxy on loopback and
# measure them the same way stolon-bench measures stolon-rs (patroni-up.sh,
# patroni-down.sh, failover-measure.sh, switchover-measure.sh, printing `SUMMARY ...
# min=.. median=.. max=..` lines). They need the Debian packages patroni, haproxy and
# python3-psycopg2, installed here first when run as root.
#
# Matching timings: stolon-rs failInterval 10s against Patroni ttl 10 / loop_wait 2 /
# retry_timeout 3, whose leader key expires 8 to 10 s after the leader is lost.
# Figures: unplanned failover (SIGKILL of the primary's manager and postgres) to the first
# acknowledged write through the proxy; planned switchover, the longest pause between two
# acknowledged writes and the client errors. RUNS defaults to 5.
set -euo pipefail
PEERS=$(cd "${1:?usage: bench/compare-peers.sh PEERS_DIR [RUNS]}" && pwd)
RUNS=${2:-5}
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q patroni haproxy python3-psycopg2 >/dev/null
fi
cargo build --release --bins -q

ours_failover=$(target/release/stolon-bench failover "$RUNS" 10s | tee /dev/stderr | grep '^{"bench"')
ours_switchover=$(target/release/stolon-bench switchover "$RUNS" | tee /dev/stderr | grep '^{"bench"')

export TTL=10 LOOP_WAIT=2 RETRY_TIMEOUT=3
"$PEERS/patroni-up.sh" --fresh >&2
theirs_failover=$("$PEERS/failover-measure.sh" --runs "$RUNS" | tee /dev/stderr | grep '^SUMMARY.*downtime_s')
theirs_switchover=$("$PEERS/switchover-measure.sh" --runs "$RUNS" | tee /dev/stderr | grep '^SUMMARY')
"$PEERS/patroni-down.sh" >&2 || true

OURS_FAILOVER=$ours_failover OURS_SWITCHOVER=$ours_switchover \
THEIRS_FAILOVER=$theirs_failover THEIRS_SWITCHOVER=$theirs_switchover \
python3 - <<'EOF'
import json, os, re

def summary(text, name):
    line = next(l for l in text.splitlines() if name in l)
    return {k: float(v) for k, v in re.findall(r"(min|median|max)=([0-9.]+)", line)}

ours_f = json.loads(os.environ["OURS_FAILOVER"])["kill_to_first_write_s"]
ours_s = json.loads(os.environ["OURS_SWITCHOVER"])
rows = [
    ("failover: kill -> first acked write (s)", ours_f,
     summary(os.environ["THEIRS_FAILOVER"], "downtime_s")),
    ("switchover: longest write pause (s)", ours_s["write_pause_s"],
     summary(os.environ["THEIRS_SWITCHOVER"], "max_gap_s")),
    ("switchover: client errors", ours_s["new_connection_errors"],
     summary(os.environ["THEIRS_SWITCHOVER"], "client_errors")),
]
print(f"{'median':<42} {'stolon-rs':>10} {'Patroni':>10} {'ratio':>8}")
out = {}
for name, ours, theirs in rows:
    ratio = ours["median"] / theirs["median"] if theirs["median"] else None
    shown = f"{ratio:.2f}" if ratio is not None else "-"
    print(f"{name:<42} {ours['median']:>10.2f} {theirs['median']:>10.2f} {shown:>8}")
    out[name] = {"stolon_rs": ours["median"], "patroni": theirs["median"], "ratio": ratio}
print(json.dumps({"bench": "compare-peers", "figures": out}))
EOF
