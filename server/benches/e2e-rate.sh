#!/usr/bin/env bash
# End-to-end latency at a steady rate beside NATS JetStream, interleaved:
# publish-to-receive at RATE messages per second, no bursts.
#
#   server/benches/e2e-rate.sh [ROUNDS] [RATE] [COUNT] [MODES]
#
# Defaults: 3 rounds, 1000 msg/s, 20 000 messages of 256 B, modes
# "page-cache fsync". Each round and mode runs, once the machine is quiet
# (QUIET_LOAD, QUIET_SECONDS: see common.sh), NATS (the peer benchmark's
# nats-e2e on a fresh server, synced before every acknowledgement in the
# fsync mode) and then `tidings bench e2e` on a fresh broker
# (--sync-interval 100ms, or always), through the Publisher and
# --unbatched (one call per message, the NATS generator's shape), then
# --unbatched --stream (one message per request on PublishStream). The
# peer benchmark's program is the one ../shared/peer-bench/run-nats.sh
# builds into its cache (run once here when it is missing). Prints the
# RESULT and LATENCY lines prefixed with the round and mode. With
# TIDINGS_BIN_DIR set, uses the broker's binaries there.
set -euo pipefail
ROUNDS=${1:-3}
RATE=${2:-1000}
COUNT=${3:-20000}
MODES=${4:-page-cache fsync}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
trap nats_stop EXIT

generator=$(peer_generator)

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        sync=100ms; [ "$mode" = fsync ] && sync=always
        quiet
        nats_server "$mode"
        load=$(cut -d' ' -f1 /proc/loadavg)
        timeout 30 "$generator" nats-setup url="$NATS_URL" storage=file > /dev/null
        timeout 600 "$generator" nats-e2e url="$NATS_URL" n="$COUNT" size=256 rate="$RATE" 2>/dev/null |
            sed -n "s/^\(RESULT\|LATENCY\) /round=$round mode=$mode load=$load /p"
        nats_stop
        bench_round "mode=$mode" "$sync" e2e --rate "$RATE" --count "$COUNT" --size 256
        bench_round "mode=$mode" "$sync" e2e --rate "$RATE" --count "$COUNT" --size 256 --unbatched
        bench_round "mode=$mode" "$sync" e2e --rate "$RATE" --count "$COUNT" --size 256 --unbatched --stream
    done
done
