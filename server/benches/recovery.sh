#!/usr/bin/env bash
# Recovery time: how long a broker takes from the start of its process to
# `listening on` after a `kill -9`, holding a large backlog.
#
#   server/benches/recovery.sh [COUNT] [SUBSCRIPTIONS] [RESTARTS] [DELAYED]
#
# One broker (--sync-interval 100ms, a fresh data directory) gets one topic
# with SUBSCRIPTIONS subscriptions (1000 unless given) and a backlog of
# COUNT messages of 256 B (10 million unless given), published at 1000 x 8.
# Then, RESTARTS times (5 unless given): `kill -9` while the last publish
# has just been acknowledged (so the write-ahead log holds what was not yet
# flushed), start the broker again on the same directory, and time the
# start to its `listening on` line; check that a subscription still holds
# every acknowledged message; publish TOPUP more (200 000 unless set), so
# that the next kill finds a busy log again. With DELAYED > 0 (a million
# unless given), DELAYED messages with a delivery delay of 3 hours are then
# added and the restarts repeated: the second case.
#
# Prints a line per restart (`restart case=... ms=... wal_mib=...`, the
# log it replayed), each case's min and median, and, to profile where the
# time goes, each start's phases from the broker's own log lines
# (`phases ... storage_ms=... broker_ms=... serve_ms=...`).
# Needs about COUNT x 300 B of disk; removes the data directory at the end
# unless KEEP_DATA is set (to read RocksDB's own LOG in it, say).
# With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
COUNT=${1:-10000000}
SUBSCRIPTIONS=${2:-1000}
RESTARTS=${3:-5}
DELAYED=${4:-1000000}
TOPUP=${TOPUP:-200000}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries

dir=$(mktemp -d)
pid=
stop() {
    [ -n "$pid" ] && { kill -9 "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
    if [ -n "${KEEP_DATA:-}" ]; then echo "# kept $dir"; else rm -rf "$dir"; fi
}
trap stop EXIT

# Microseconds since the epoch, without a fork.
now_us() { echo "${EPOCHREALTIME/./}"; }

# Copies standard input to standard output, each line prefixed with the
# time it was read.
stamp() { while IFS= read -r line; do printf '%s %s\n' "$(now_us)" "$line"; done; }

# launch LABEL: starts the broker on the data directory; sets pid, addr and took_ms (the
# start of the process to its `listening on` line).
launch() {
    : > "$dir/stdout"
    local t0 line
    echo "--- start $1 at $(date -u +%Y-%m-%dT%H:%M:%S.%6NZ)" >> "$dir/server.log"
    t0=$(now_us)
    "$BIN/tidings-server" --listen 127.0.0.1:0 --data-dir "$dir/data" --sync-interval 100ms \
        --log info > >(stamp > "$dir/stdout") 2>> "$dir/server.log" &
    pid=$!
    line=
    for _ in $(seq 6000); do
        line=$(grep -m1 ' listening on ' "$dir/stdout" || true)
        [ -n "$line" ] && break
        kill -0 "$pid" 2>/dev/null || { echo "the broker exited:" >&2; tail -n 20 "$dir/server.log" >&2; exit 1; }
        sleep 0.01
    done
    [ -n "$line" ] || { echo "no 'listening on' after 60 s" >&2; exit 1; }
    addr=${line##* }
    took_ms=$(( (${line%% *} - t0) / 1000 ))
}

tidings() { "$BIN/tidings" --server "$addr" "$@"; }
field() { tidings subs describe "$1" --json | sed -n "s/.*\"$2\": *\([0-9]*\).*/\1/p" | head -n1; }
publish() { tidings bench publish --topic backlog --count "$1" --batch 1000 --in-flight 8 "${@:2}" 2>/dev/null | sed -n 's/^RESULT /publish /p'; }

# The median and minimum of the numbers on standard input.
summary() { sort -n | awk '{ v[NR] = $1 } END { printf "min_ms=%d median_ms=%d n=%d\n", v[1], v[int((NR + 1) / 2)], NR }'; }

launch first
tidings topics create backlog > /dev/null
for i in $(seq 0 $((SUBSCRIPTIONS - 1))); do
    tidings subs create "s$i" --topic backlog > /dev/null
done
echo "# $SUBSCRIPTIONS subscriptions, publishing $COUNT messages, load: $(cut -d' ' -f1-3 /proc/loadavg)"
publish "$COUNT"
published=$COUNT

# restarts CASE EXPECTED_DELAYED: the kill -9 and restart rounds.
restarts() {
    local case=$1 delayed=$2 times=() r backlog waiting wal
    for r in $(seq "$RESTARTS"); do
        kill -9 "$pid"; wait "$pid" 2>/dev/null || true
        # The write-ahead log the start replays.
        wal=$(find "$dir/data" -name '*.log' -printf '%s\n' | awk '{ s += $1 } END { printf "%d", s / 1048576 }')
        local load
        load=$(cut -d' ' -f1 /proc/loadavg)
        launch "case=$case round=$r"
        backlog=$(field s0 backlog)
        waiting=$(field s0 delayed)
        echo "restart case=$case round=$r ms=$took_ms wal_mib=$wal backlog=$backlog delayed=${waiting:-0} load=$load"
        [ "$backlog" -ge "$published" ] || { echo "LOST: backlog $backlog < $published published" >&2; exit 1; }
        times+=("$took_ms")
        if [ "$r" -lt "$RESTARTS" ]; then
            publish "$TOPUP" ${delayed:+--delay 3h} > /dev/null
            published=$((published + TOPUP))
        fi
    done
    printf '%s\n' "${times[@]}" | summary | sed "s/^/recovery case=$case /"
}

restarts backlog ""
if [ "$DELAYED" -gt 0 ]; then
    echo "# publishing $DELAYED delayed messages, load: $(cut -d' ' -f1-3 /proc/loadavg)"
    publish "$DELAYED" --delay 3h
    published=$((published + DELAYED))
    restarts delayed yes
fi
echo "# data directory: $(du -sh "$dir/data" | cut -f1), load: $(cut -d' ' -f1-3 /proc/loadavg)"
# Where each start spent its time, from the broker's own lifecycle lines:
# the process start to storage opened (RocksDB's open with its log replay,
# and the writer's recovery), to the broker loaded (the catalog, the
# subscriptions, the delayed counts), to serving.
sed -E 's/\x1b\[[0-9;]*m//g' "$dir/server.log" | awk '
function ms(stamp,  hms) {
    sub(/Z$/, "", stamp)
    split(substr(stamp, index(stamp, "T") + 1), hms, ":")
    return (hms[1] * 3600 + hms[2] * 60 + hms[3]) * 1000
}
/^--- start / {
    label = $3
    for (i = 4; i < NF - 1; i++) label = label " " $i
    start = ms($NF)
    next
}
/storage opened/ { storage = ms($1) }
/broker opened/ { broker = ms($1) }
/ serving / {
    printf "phases %s storage_ms=%d broker_ms=%d serve_ms=%d\n", label, storage - start, broker - storage, ms($1) - broker
}'
