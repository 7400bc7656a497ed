#!/usr/bin/env bash
# The consume workloads of ordering, retry and filters, each beside its
# baseline, interleaved: every run on a fresh broker, the two sides of a
# pair alternating which goes first from round to round.
#
#   server/benches/consume-variants.sh [ROUNDS] [N] [page-cache|fsync]
#
# Pairs (A then B in odd rounds, B then A in even ones):
#   ordered:  unordered, 4 streams       | --ordered-keys 1000, 4 streams
#   poison:   1000 keys, --poison-keys 0 | 1000 keys, --poison-keys 1
#   filter:   no filter, 1 stream        | --filter 'attributes.pick = "yes"' (10 %)
# Prints each run's RESULT lines prefixed with the round and the side.
# With TIDINGS_BIN_DIR set, uses the binaries there instead of building.
set -euo pipefail
ROUNDS=${1:-3}
N=${2:-300000}
MODE=${3:-page-cache}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
sync=always; [ "$MODE" = page-cache ] && sync=100ms

# One consume run on a fresh broker: run LABEL ARGS...
run() {
    local label=$1; shift
    fresh_broker_bench "$sync" consume --count "$N" "$@" | sed "s/^/$label /"
}

pair() {
    local round=$1 name=$2 a=$3 b=$4
    # shellcheck disable=SC2086 # the sides are word lists on purpose
    if [ $((round % 2)) = 1 ]; then
        run "round=$round $name=A" $a; run "round=$round $name=B" $b
    else
        run "round=$round $name=B" $b; run "round=$round $name=A" $a
    fi
}

echo "# consume variants, mode=$MODE (--sync-interval $sync), N=$N, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    pair "$round" ordered "--streams 4" "--streams 4 --ordered-keys 1000"
    pair "$round" poison "--streams 4 --ordered-keys 1000 --poison-keys 0" \
        "--streams 4 --ordered-keys 1000 --poison-keys 1"
    run_filter_b=(--filter 'attributes.pick = "yes"' --match-percent 10)
    if [ $((round % 2)) = 1 ]; then
        run "round=$round filter=A"; run "round=$round filter=B" "${run_filter_b[@]}"
    else
        run "round=$round filter=B" "${run_filter_b[@]}"; run "round=$round filter=A"
    fi
done
