#!/usr/bin/env bash
# Fan-out beside NATS JetStream, interleaved: one topic (stream), K
# subscriptions (consumers), each receiving and acknowledging every one of
# N messages of 256 B.
#
#   server/benches/fanout.sh [ROUNDS] [COUNT] [SUBSCRIPTIONS] [MODES]
#
# Defaults: 3 rounds, 20 000 messages, 100 subscriptions, modes
# "page-cache fsync". Each round and mode runs NATS (our load generator in
# nats-fanout/, 100 durable pull consumers with explicit acks on one
# connection, on a fresh server, synced before every acknowledgement in the
# fsync mode) and then `tidings bench fanout` on a fresh broker
# (--sync-interval 100ms, or always in the fsync mode), once the machine is
# quiet (QUIET_LOAD, QUIET_SECONDS: see common.sh). Both count deliveries
# (N x K) per second, from the first publish until every subscription has
# acknowledged all N. Prints the RESULT lines prefixed with the round and
# mode. With TIDINGS_BIN_DIR set, uses the broker's binaries there.
set -euo pipefail
ROUNDS=${1:-3}
COUNT=${2:-20000}
SUBSCRIPTIONS=${3:-100}
MODES=${4:-page-cache fsync}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
trap nats_stop EXIT

# The NATS load generator, a workspace of its own.
target=${CARGO_TARGET_DIR:-$HOME/.cache/tidings/target}
CARGO_TARGET_DIR=$target cargo build --release -q --manifest-path server/benches/nats-fanout/Cargo.toml
generator=$target/release/nats-fanout

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        sync=100ms; [ "$mode" = fsync ] && sync=always
        quiet
        nats_server "$mode"
        timeout 600 "$generator" url="$NATS_URL" consumers="$SUBSCRIPTIONS" n="$COUNT" size=256 2>/dev/null |
            sed "s/^/round=$round mode=$mode load=$(cut -d' ' -f1 /proc/loadavg) /"
        nats_stop
        bench_round "mode=$mode load=$(cut -d' ' -f1 /proc/loadavg)" "$sync" \
            fanout --subscriptions "$SUBSCRIPTIONS" --count "$COUNT" --size 256
    done
done
