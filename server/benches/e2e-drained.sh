#!/usr/bin/env bash
# End-to-end latency on a broker that has just stored and drained a
# backlog, beside NATS JetStream measured the same way, interleaved:
#
#   server/benches/e2e-drained.sh [ROUNDS] [N] [RATE] [COUNT]
#
# Defaults: 5 rounds, N = 300 000 messages of 256 B, then 50 000 at
# 10 000 msg/s; page-cache mode (NATS's defaults; Tidings with
# --sync-interval 100ms). Each run starts a fresh server, publishes N
# messages (256 in flight), has N consumed and acknowledged, and at once
# (its flushes and compactions still running) measures publish-to-receive
# latency at RATE on a fresh consumer:
#
# - nats: the peer benchmark's nats-pub, nats-sub and nats-e2e (the
#   sequence of ../shared/peer-bench/run-nats.sh): N stored, the same N
#   drained;
# - stream: Tidings, `bench publish` (N, one message per request on
#   PublishStream) then `bench consume` (which stores N more for a fresh
#   subscription and drains those: so the broker holds 2 N, N drained, as
#   run-tidings.sh leaves it), then the latency run with one message per
#   request on PublishStream (`--unbatched --stream`);
# - publisher: Tidings, the backlog as above, the latency run through the
#   client's Publisher on its default transport, PublishStream (messages
#   queued together share a request);
# - publisher-unary: the same with the Publisher on unary Publish calls
#   (`tidings bench e2e` without --stream, as run-tidings.sh runs it).
#
# Every run waits for a quiet machine first (QUIET_LOAD, QUIET_SECONDS:
# see common.sh). Prints the latency runs' RESULT and LATENCY lines
# prefixed with the round and variant. With TIDINGS_BIN_DIR set, uses the
# broker's binaries there.
set -euo pipefail
ROUNDS=${1:-5}
N=${2:-300000}
RATE=${3:-10000}
COUNT=${4:-50000}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
trap nats_stop EXIT

generator=$(peer_generator)

# tidings_drained VARIANT E2E_FLAGS...: the backlog, drained, then the
# latency run with E2E_FLAGS, on a fresh broker.
tidings_drained() {
    local variant=$1
    shift
    quiet
    local load
    load=$(cut -d' ' -f1 /proc/loadavg)
    broker_start 100ms
    local bench=("$BIN/tidings" --server "http://$BROKER_ADDR" bench)
    "${bench[@]}" publish --count "$N" --size 256 --batch 1 --in-flight 256 --stream 2>/dev/null > /dev/null
    "${bench[@]}" consume --count "$N" --size 256 2>/dev/null > /dev/null
    "${bench[@]}" e2e --rate "$RATE" --count "$COUNT" --size 256 "$@" --server-pid "$BROKER_PID" 2>/dev/null |
        sed -n "s/^\(RESULT\|LATENCY\) /round=$round $variant load=$load /p"
    broker_stop
}

for round in $(seq "$ROUNDS"); do
    quiet
    load=$(cut -d' ' -f1 /proc/loadavg)
    nats_server page-cache
    timeout 30 "$generator" nats-setup url="$NATS_URL" storage=file > /dev/null
    timeout 180 "$generator" nats-pub url="$NATS_URL" n="$N" size=256 window=256 subject=bench.x > /dev/null
    timeout 180 "$generator" nats-sub url="$NATS_URL" n="$N" batch=500 ack=explicit > /dev/null
    timeout 600 "$generator" nats-e2e url="$NATS_URL" n="$COUNT" size=256 rate="$RATE" 2>/dev/null |
        sed -n "s/^\(RESULT\|LATENCY\) /round=$round nats load=$load /p"
    nats_stop
    tidings_drained stream --unbatched --stream
    tidings_drained publisher --stream
    tidings_drained publisher-unary
done
echo "# rounds=$ROUNDS n=$N rate=$RATE count=$COUNT load: $(cut -d' ' -f1-3 /proc/loadavg)"
