#!/usr/bin/env bash
# Consume with and without an auth file, interleaved: every run on a fresh
# broker, the two sides alternating which goes first from round to round.
#
#   server/benches/auth-consume.sh [ROUNDS] [N] [page-cache|fsync]
#
# Sides: open (no --auth-file) | auth (--auth-file of 20 principals, the
# bench's token the last one, grants on name patterns; every call carries
# the token). Prints each run's RESULT and SERVER lines prefixed with the
# round and the side. With TIDINGS_BIN_DIR set, uses the binaries there
# instead of building.
set -euo pipefail
ROUNDS=${1:-3}
N=${2:-300000}
MODE=${3:-page-cache}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries
sync=always; [ "$MODE" = page-cache ] && sync=100ms

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
auth="$work/auth.toml"
for i in $(seq 19); do
    hash=$("$BIN/tidings-server" hash-token | sed -n 's/^token_sha256: *//p')
    printf '[[principal]]\nname = "team-%s"\ntoken_sha256 = "%s"\n\n' "$i" "$hash" >> "$auth"
    printf '[[grant]]\nprincipal = "team-%s"\nactions = ["publish", "subscribe"]\n' "$i" >> "$auth"
    printf 'topics = ["team-%s.*"]\nsubscriptions = ["team-%s-*"]\n\n' "$i" "$i" >> "$auth"
done
printed=$("$BIN/tidings-server" hash-token)
token=$(sed -n 's/^token: *//p' <<< "$printed")
hash=$(sed -n 's/^token_sha256: *//p' <<< "$printed")
cat >> "$auth" <<TOML
[[principal]]
name = "bench"
token_sha256 = "$hash"

[[grant]]
principal = "bench"
actions = ["publish", "subscribe", "admin"]
topics = ["orders.*", "bench*"]
subscriptions = ["orders-*", "bench*"]
TOML

# One consume run on a fresh broker: run SIDE ROUND. The broker reads
# TIDINGS_AUTH_FILE, the CLI TIDINGS_TOKEN.
run() {
    local side=$1 round=$2
    if [ "$side" = auth ]; then
        TIDINGS_AUTH_FILE="$auth" TIDINGS_TOKEN="$token" \
            fresh_broker_bench "$sync" consume --count "$N"
    else
        fresh_broker_bench "$sync" consume --count "$N"
    fi | sed -n "s/^\(RESULT\|SERVER\) /round=$round $side /p"
}

echo "# consume with and without --auth-file, mode=$MODE (--sync-interval $sync), N=$N, load: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
        run open "$round"; run auth "$round"
    else
        run auth "$round"; run open "$round"
    fi
done
