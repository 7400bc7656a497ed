#!/usr/bin/env bash
# A million delayed messages and the broker's memory: the broker's RSS with
# a subscription's stream open and idle, then after COUNT messages
# published with a delivery delay of DELAY (all scanned past by that
# stream), and after the same number published without a delay and
# consumed, for comparison.
#
#   server/benches/delayed-rss.sh [COUNT] [DELAY]
#
# Prints the RSS samples in MiB and the difference the delayed messages
# make. With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
COUNT=${1:-1000000}
DELAY=${2:-1h}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
dir=$(mktemp -d)
"$BIN/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval 100ms \
    --log warn > "$dir/stdout" 2> "$dir/server.log" &
pid=$!
consumers=()
cleanup() {
    for c in "${consumers[@]}"; do kill "$c" 2>/dev/null || true; done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
addr=$(broker_addr "$dir/stdout")
tidings() { "$BIN/tidings" --server "$addr" "$@"; }
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }
field() { tidings subs describe "$1" --json | sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p"; }

tidings topics create later > /dev/null
tidings subs create waiting --topic later > /dev/null
tidings sub waiting > /dev/null 2> "$dir/waiting.log" &
consumers+=($!)
sleep 5
idle=$(rss_mib)
echo "rss idle_mib=$idle"

tidings bench publish --topic later --count "$COUNT" --batch 1000 --in-flight 8 --delay "$DELAY" \
    2>/dev/null | sed -n 's/^RESULT /publish delayed /p'
# The stream scans past every delayed message; wait until the feed has
# counted them all, then a little for the scan to pass.
for _ in $(seq 120); do
    [ "$(field waiting delayed)" = "$COUNT" ] && break
    sleep 1
done
sleep 20
delayed=$(rss_mib)
echo "rss delayed_mib=$delayed delayed=$(field waiting delayed) backlog=$(field waiting backlog)"

tidings topics create now > /dev/null
tidings sub consumer --topic now > /dev/null 2> "$dir/consumer.log" &
consumers+=($!)
tidings bench publish --topic now --count "$COUNT" --batch 1000 --in-flight 8 \
    2>/dev/null | sed -n 's/^RESULT /publish plain /p'
for _ in $(seq 300); do
    [ "$(field consumer backlog)" = "0" ] && break
    sleep 1
done
plain=$(rss_mib)
echo "rss after_plain_mib=$plain"
awk -v i="$idle" -v d="$delayed" 'BEGIN { printf "delayed - idle = %.1f MiB (target: at most 100)\n", d - i }'
echo "# count=$COUNT delay=$DELAY load: $(cut -d' ' -f1-3 /proc/loadavg)"
