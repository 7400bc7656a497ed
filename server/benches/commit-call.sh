#!/usr/bin/env bash
# Commit and Call beside their baselines, interleaved on the same build:
#
# - commit: `bench commit` (publish one message and acknowledge one input
#   per commit) against `bench publish --batch 1` (one message per call),
#   both 256 in flight, with --sync-interval always and 100ms;
# - call: `bench call` round trips to a responder in the same process,
#   1 and 16 calls waiting at once.
#
#   server/benches/commit-call.sh [ROUNDS] [COUNT]
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
        bench_round "$sync publish" "$sync" publish --count "$COUNT" --batch 1 --in-flight 256
        bench_round "$sync commit" "$sync" commit --count "$COUNT" --in-flight 256
    done
    bench_round "call x1" always call --count $((COUNT / 5)) --in-flight 1
    bench_round "call x16" always call --count $((COUNT / 5)) --in-flight 16
done
echo "# rounds=$ROUNDS count=$COUNT load: $(cut -d' ' -f1-3 /proc/loadavg)"
