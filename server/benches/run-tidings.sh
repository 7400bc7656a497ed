#!/usr/bin/env bash
# Tidings' figures on this machine, in the same format and with the same
# workloads as the NATS JetStream baseline (../shared/peer-bench/run-nats.sh),
# so that the two compare line by line in one session.
#
#   server/benches/run-tidings.sh [page-cache|fsync] [N] [SIZE]
#
# fsync:      the default --sync-interval=always (synced before each ack).
# page-cache: --sync-interval=100ms (acknowledged once written to the log).
# e2e runs twice: through the client's Publisher (messages queued together
# share a call, as in applications) and --unbatched (one call per message,
# the shape of the NATS load generator). Those runs use unary Publish calls,
# as every earlier figure did; then the one-message-per-request shapes run
# again on PublishStream (publish and unbatched e2e, `rpc=stream` in their
# RESULT and LATENCY names). The WRITER summary covers all of them.
# Builds release binaries, starts a broker on a free loopback port with a
# fresh data directory, runs the workloads, and stops the broker. With
# TIDINGS_BIN_DIR set, uses the tidings-server and tidings binaries there
# instead of building (ab.sh compares two builds that way).
set -euo pipefail
MODE=${1:-page-cache}
N=${2:-300000}
SIZE=${3:-256}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries

dir=$(mktemp -d)
sync=always; [ "$MODE" = page-cache ] && sync=100ms
"$BIN/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval "$sync" \
    --log warn,tidings_server::storage::rocks::writer=info > "$dir/stdout" 2> "$dir/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
addr=$(broker_addr "$dir/stdout")
T=("$BIN/tidings" --server "$addr" bench)

echo "# Tidings file storage, mode=$MODE (--sync-interval $sync), N=$N, size=${SIZE}B, load: $(cut -d' ' -f1-3 /proc/loadavg)"
"${T[@]}" publish --count "$N" --size "$SIZE" --batch 1 --in-flight 256 --server-pid "$pid" 2>/dev/null
"${T[@]}" consume --count "$N" --size "$SIZE" --server-pid "$pid" 2>/dev/null
"${T[@]}" e2e --rate 10000 --count 50000 --size "$SIZE" --server-pid "$pid" 2>/dev/null
"${T[@]}" e2e --rate 10000 --count 50000 --size "$SIZE" --unbatched --server-pid "$pid" 2>/dev/null
# One message per request on PublishStream.
"${T[@]}" publish --count "$N" --size "$SIZE" --batch 1 --in-flight 256 --stream --server-pid "$pid" 2>/dev/null
"${T[@]}" e2e --rate 10000 --count 50000 --size "$SIZE" --unbatched --stream --server-pid "$pid" 2>/dev/null
# Group commit over the whole run: messages per synced write.
kill -TERM "$pid"; wait "$pid" || true
grep -o 'batches=.*messages_per_batch=[0-9.]*' "$dir/server.log" | sed 's/^/WRITER /' || true
