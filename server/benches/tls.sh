#!/usr/bin/env bash
# TLS beside plaintext, interleaved on the same build: `bench publish` at
# 64 × 4 (batches of 64 messages, 4 calls in flight) and `bench consume`,
# each on a fresh broker, once with plaintext gRPC and once with TLS
# (a CA and a broker certificate for 127.0.0.1 made here with openssl;
# the tool trusts the CA with --ca-cert).
#
#   server/benches/tls.sh [ROUNDS] [COUNT]
#
# Prints the bench's RESULT, LATENCY and SERVER lines prefixed with the
# round and the variant. With TIDINGS_BIN_DIR set, uses the binaries there.
set -euo pipefail
ROUNDS=${1:-3}
COUNT=${2:-200000}
cd "$(dirname "$0")/../.."
# shellcheck source=server/benches/common.sh
. server/benches/common.sh
bench_binaries

pki=$(mktemp -d)
trap 'rm -rf "$pki"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench-ca -keyout "$pki/ca-key.pem" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$pki/server-key.pem" -out "$pki/server.csr" 2>/dev/null
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca-key.pem" \
    -CAcreateserial -days 1 -out "$pki/server.pem" \
    -extfile <(printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n') \
    2>/dev/null

plain() { SERVER_ARGS=(); CLIENT_ARGS=(); SCHEME=http; }
tls() {
    SERVER_ARGS=(--tls-cert "$pki/server.pem" --tls-key "$pki/server-key.pem")
    CLIENT_ARGS=(--ca-cert "$pki/ca.pem")
    SCHEME=https
}

for round in $(seq "$ROUNDS"); do
    for variant in plain tls; do
        "$variant"
        bench_round "$variant publish" always publish --count "$COUNT" --batch 64 --in-flight 4
        bench_round "$variant consume" always consume --count "$COUNT"
    done
done
echo "# rounds=$ROUNDS count=$COUNT load: $(cut -d' ' -f1-3 /proc/loadavg)"
