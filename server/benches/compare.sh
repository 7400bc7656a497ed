#!/usr/bin/env bash
# Tidings beside NATS JetStream, interleaved, on this machine:
#
#   server/benches/compare.sh [ROUNDS] [SIZE] [MODES]
#
# For each round and each mode (default "fsync page-cache"), runs the NATS
# baseline (../shared/peer-bench/run-nats.sh) and then Tidings
# (run-tidings.sh) with the same workloads, waiting before each run until
# the load average is below 1. Prints every RESULT/LATENCY/SERVER line,
# prefixed with the round. Bounded: every workload stops by itself.
set -euo pipefail
ROUNDS=${1:-3}
SIZE=${2:-256}
MODES=${3:-fsync page-cache}
here=$(cd "$(dirname "$0")" && pwd)
peer="$here/../../../shared/peer-bench/run-nats.sh"   # shared/ sits beside the checkout

# shellcheck source=server/benches/common.sh
. "$here/common.sh"

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        N=300000; [ "$mode" = fsync ] && N=100000
        quiet
        bash "$peer" "$mode" "$N" "$SIZE" 2>/dev/null | sed "s/^/round=$round mode=$mode /"
        quiet
        "$here/run-tidings.sh" "$mode" "$N" "$SIZE" | sed "s/^/round=$round mode=$mode /"
    done
done
