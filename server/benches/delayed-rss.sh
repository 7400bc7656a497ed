#!/usr/bin/env bash
# A million delayed messages and the broker's memory. Two fresh brokers,
# each with one subscription on one topic and COUNT messages of 256 B
# published at 1000 x 8:
#
# - without them: the messages are published without a delay, and the
#   subscription has no stream (so none is read or delivered);
# - with them: the messages are published with a delivery delay of DELAY
#   while a stream is open on the subscription, which scans past every one
#   of them (they are counted in its `delayed`).
#
#   server/benches/delayed-rss.sh [COUNT] [DELAY]
#
# Prints each broker's RSS in MiB once it settled, and the difference.
# With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
COUNT=${1:-1000000}
DELAY=${2:-1h}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
pid=
dir=
stream=
stop() {
    [ -n "$stream" ] && kill "$stream" 2>/dev/null || true
    [ -n "$pid" ] && { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    [ -n "$dir" ] && rm -rf "$dir"
    pid= dir= stream=
}
trap stop EXIT
start() {
    dir=$(mktemp -d)
    "$BIN/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval 100ms \
        --log warn > "$dir/stdout" 2> "$dir/server.log" &
    pid=$!
    addr=$(broker_addr "$dir/stdout")
    tidings topics create later > /dev/null
    tidings subs create waiting --topic later > /dev/null
}
tidings() { "$BIN/tidings" --server "$addr" "$@"; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
field() { tidings subs describe "$1" --json | sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p"; }

start
tidings bench publish --topic later --count "$COUNT" --batch 1000 --in-flight 8 \
    2>/dev/null | sed -n 's/^RESULT /publish plain /p'
sleep 20
without=$(rss_mib)
echo "rss without_mib=$without backlog=$(field waiting backlog)"
stop

start
tidings sub waiting > /dev/null 2> "$dir/stream.log" &
stream=$!
tidings bench publish --topic later --count "$COUNT" --batch 1000 --in-flight 8 --delay "$DELAY" \
    2>/dev/null | sed -n 's/^RESULT /publish delayed /p'
for _ in $(seq 120); do
    [ "$(field waiting delayed)" = "$COUNT" ] && break
    sleep 1
done
# Long enough for the stream to scan past every message.
sleep 20
with=$(rss_mib)
echo "rss with_mib=$with delayed=$(field waiting delayed) backlog=$(field waiting backlog) in_flight=$(field waiting in_flight)"
stop
awk -v a="$without" -v b="$with" 'BEGIN { printf "with - without = %.1f MiB (target: at most 100)\n", b - a }'
echo "# count=$COUNT delay=$DELAY load: $(cut -d' ' -f1-3 /proc/loadavg)"
