#!/usr/bin/env bash
# Steady state under retention: publish as fast as the broker sustains
# (relaxed sync) into a topic that keeps MAX_AGE of messages, with one
# subscription consuming, for MINUTES; sample the data directory's size.
#
#   server/benches/retention-steady.sh [MINUTES] [MAX_AGE] [BATCH]
#
# Prints one line per publish run (its rate), one per size sample, and a
# summary: the first and last minute's publish rates, the largest size of
# the data directory, and one MAX_AGE's worth of data at the first
# minute's rate. With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
MINUTES=${1:-10}
MAX_AGE=${2:-1m}
BATCH=${3:-100}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
dir=$(mktemp -d)
"$BIN/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval 100ms \
    --log warn > "$dir/stdout" 2> "$dir/server.log" &
pid=$!
consumer=
cleanup() {
    [ -n "$consumer" ] && kill "$consumer" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
addr=$(broker_addr "$dir/stdout")
tidings() { "$BIN/tidings" --server "$addr" "$@"; }
tidings topics create steady --retention "$MAX_AGE" > /dev/null
"$BIN/tidings" --server "$addr" sub consumer --topic steady --start latest \
    > /dev/null 2> "$dir/consumer.log" &
consumer=$!

end=$(( $(date +%s) + MINUTES * 60 ))
start=$(date +%s)
(
    while [ "$(date +%s)" -lt "$end" ]; do
        printf 'size t=%d bytes=%d\n' $(( $(date +%s) - start )) "$(du -sb "$dir/data" | cut -f1)"
        sleep 10
    done
) &
sampler=$!
while [ "$(date +%s)" -lt "$end" ]; do
    t=$(( $(date +%s) - start ))
    tidings bench publish --topic steady --count 2000000 --batch "$BATCH" --in-flight 8 2>/dev/null \
        | sed -n "s/^RESULT /run t=$t /p"
done
wait "$sampler" || true
echo "# retention=$MAX_AGE minutes=$MINUTES batch=$BATCH load: $(cut -d' ' -f1-3 /proc/loadavg)"
tidings topics describe steady
