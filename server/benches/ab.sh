#!/usr/bin/env bash
# Two builds of Tidings against each other, interleaved, on this machine:
# did a change make the broker slower or bigger?
#
#   server/benches/ab.sh OLD_DIR NEW_DIR [ROUNDS] [SIZE] [MODES]
#
# OLD_DIR and NEW_DIR each hold a release tidings-server; the tidings
# load generator is NEW_DIR's for both, so only the broker differs. For
# each round and mode (default "fsync page-cache") it runs run-tidings.sh
# (publish at 1 message per request, consume, e2e batched and unbatched)
# on the old build and then the new one, then the larger workloads: publish
# at 16 x 16 and 64 x 4, fan-out to 10 000 streams, and a backlog of
# 3 million drained. Waits before every run until the load average is
# below 1. Every RESULT/LATENCY/SERVER line is prefixed with the round, the
# mode and the build.
set -euo pipefail
OLD=$(cd "$1" && pwd)
NEW=$(cd "$2" && pwd)
ROUNDS=${3:-3}
SIZE=${4:-256}
MODES=${5:-fsync page-cache}
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=server/benches/common.sh
. "$here/common.sh"
CLI="$NEW/tidings"

# Starts a broker of build $1 in mode $2 on a fresh data directory; sets
# pid, addr and dir.
start() {
    dir=$(mktemp -d)
    local sync=always
    [ "$2" = page-cache ] && sync=100ms
    "$1/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval "$sync" \
        --log warn > "$dir/stdout" 2> "$dir/server.log" &
    pid=$!
    addr=$(broker_addr "$dir/stdout")
}

stop() {
    kill -TERM "$pid"; wait "$pid" || true
    rm -rf "$dir"
}

# The larger workloads, each on a fresh broker of build $1 in mode $2.
large() {
    local bench=("$CLI" --server)
    start "$1" "$2"
    "${bench[@]}" "$addr" bench publish --count 1000000 --size "$SIZE" --batch 16 --in-flight 16 --server-pid "$pid" 2>/dev/null
    stop
    start "$1" "$2"
    "${bench[@]}" "$addr" bench publish --count 1000000 --size "$SIZE" --batch 64 --in-flight 4 --server-pid "$pid" 2>/dev/null
    stop
    start "$1" "$2"
    "${bench[@]}" "$addr" bench fanout --subscriptions 10000 --count 10 --server-pid "$pid" 2>/dev/null
    stop
    start "$1" "$2"
    "${bench[@]}" "$addr" bench consume --count 3000000 --size "$SIZE" --server-pid "$pid" 2>/dev/null
    stop
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for build in OLD NEW; do
    mkdir -p "$tmp/$build"
    ln -s "${!build}/tidings-server" "$tmp/$build/tidings-server"
    ln -s "$CLI" "$tmp/$build/tidings"
done
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        N=300000; [ "$mode" = fsync ] && N=100000
        for build in OLD NEW; do
            quiet
            TIDINGS_BIN_DIR="$tmp/$build" "$here/run-tidings.sh" "$mode" "$N" "$SIZE" |
                sed "s/^/round=$round mode=$mode build=$build /"
        done
        for build in OLD NEW; do
            quiet
            large "$tmp/$build" "$mode" | sed "s/^/round=$round mode=$mode build=$build /"
        done
    done
done
