#!/usr/bin/env bash
# The costs and gains of the data lifecycle features, each beside its
# baseline on the same build, interleaved so the machine's noise hits both:
#
# - dedup: publishing at 64 x 4 with a unique id on every message, against
#   the same without ids (disk topic, --sync-interval always and 100ms);
# - memory: publishing at 64 x 4 into a memory topic against a disk topic
#   in relaxed mode (100ms), and e2e latency at 10 000 msg/s through each.
#
#   server/benches/lifecycle.sh [ROUNDS] [COUNT]
#
# Every run gets a fresh broker. Prints the bench's RESULT and LATENCY
# lines prefixed with the round and the variant; compare the ratios of
# the medians. With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
ROUNDS=${1:-3}
COUNT=${2:-1000000}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries

for round in $(seq "$ROUNDS"); do
    pub=(publish --count "$COUNT" --batch 64 --in-flight 4)
    bench_round "fsync plain" always "${pub[@]}"
    bench_round "fsync ids" always "${pub[@]}" --ids
    bench_round "relaxed plain" 100ms "${pub[@]}"
    bench_round "relaxed ids" 100ms "${pub[@]}" --ids
    bench_round "relaxed memory" 100ms "${pub[@]}" --memory
    bench_round "e2e disk" 100ms e2e --rate 10000 --count 100000
    bench_round "e2e memory" 100ms e2e --rate 10000 --count 100000 --memory
done
echo "# rounds=$ROUNDS count=$COUNT load: $(cut -d' ' -f1-3 /proc/loadavg)"
