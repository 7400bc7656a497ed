#!/usr/bin/env bash
# Tidings beside NATS JetStream and RabbitMQ, interleaved, on this machine:
#
#   server/benches/compare.sh [ROUNDS] [SIZE] [MODES] [PEERS]
#
# For each round and each mode (default "fsync page-cache"), runs the
# peers' baselines and then Tidings (run-tidings.sh) with the same
# workloads (publish, consume, e2e), waiting before each run until the
# machine is quiet (see `quiet` in common.sh: QUIET_LOAD, QUIET_SECONDS).
# PEERS (default "nats rabbitmq") names the baselines:
#
# - nats: ../shared/peer-bench/run-nats.sh, in both modes;
# - rabbitmq: ../shared/peer-bench/run-rabbitmq.sh quorum, in the fsync
#   mode only: a quorum queue syncs before it confirms, and has no mode
#   that does not.
#
# N is 100 000 in the fsync mode (the NATS script caps its publish at
# 20 000) and 300 000 in the page-cache mode; COUNT overrides both.
# Prints every RESULT/LATENCY/SERVER line, prefixed with the round and
# mode. Bounded: every workload stops by itself.
set -euo pipefail
ROUNDS=${1:-3}
SIZE=${2:-256}
MODES=${3:-fsync page-cache}
PEERS=${4:-nats rabbitmq}
here=$(cd "$(dirname "$0")" && pwd)
peers="$here/../../../shared/peer-bench"   # shared/ sits beside the checkout

# shellcheck source=server/benches/common.sh
. "$here/common.sh"

# peer NAME SCRIPT ARGS...: one baseline run, prefixed like Tidings' lines.
peer() {
    local name=$1 script=$2
    shift 2
    case " $PEERS " in *" $name "*) ;; *) return 0 ;; esac
    quiet
    bash "$peers/$script" "$@" 2>/dev/null | sed "s/^/round=$round mode=$mode /"
}

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        N=300000; [ "$mode" = fsync ] && N=100000
        N=${COUNT:-$N}
        peer nats run-nats.sh "$mode" "$N" "$SIZE"
        [ "$mode" = fsync ] && peer rabbitmq run-rabbitmq.sh quorum "$N" "$SIZE"
        quiet
        "$here/run-tidings.sh" "$mode" "$N" "$SIZE" | sed "s/^/round=$round mode=$mode /"
    done
done
