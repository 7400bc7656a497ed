#!/usr/bin/env bash
# The HTTP bus and push subscriptions beside their baselines, interleaved
# on the same build:
#
# - publish: `bench http-publish` (one message per HTTP request) against
#   `bench publish --batch 1` (one message per gRPC call), both 64 in
#   flight, with --sync-interval always and 100ms;
# - push: `bench push`, a backlog POSTed to an endpoint that answers at
#   once, max_outstanding 100.
#
#   server/benches/http-push.sh [ROUNDS] [COUNT]
#
# Every run gets a fresh broker. Prints the bench's RESULT and LATENCY
# lines prefixed with the round and the variant. With TIDINGS_BIN_DIR set,
# uses the binaries there.
set -euo pipefail
ROUNDS=${1:-3}
COUNT=${2:-50000}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries

for round in $(seq "$ROUNDS"); do
    for sync in always 100ms; do
        bench_round "$sync grpc" "$sync" publish --count "$COUNT" --batch 1 --in-flight 64
        bench_round "$sync http" "$sync" http-publish --http @HTTP@ --count "$COUNT" --in-flight 64
    done
    bench_round "push" always push --count "$COUNT" --max-outstanding 100
done
echo "# rounds=$ROUNDS count=$COUNT load: $(cut -d' ' -f1-3 /proc/loadavg)"
