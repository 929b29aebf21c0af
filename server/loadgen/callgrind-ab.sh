#!/bin/sh
# Server instructions per relayed message and per pairing (callgrind's Ir), for server
# binaries side by side in one run (#11 item 5). Unlike CPU time, an instruction count does
# not depend on what else the machine does, so a busy machine still gives a fair
# before/after comparison.
#
#   server/loadgen/callgrind-ab.sh LOADGEN SERVER_BIN [SERVER_BIN…]
#
# For each binary, the server runs under `valgrind --tool=callgrind` on a fixed loopback
# port and the loadgen drives it (`--server URL --server-pid PID`) twice per scenario, with
# a short and a long window; the difference of the two instruction totals over the
# difference of the work done leaves out start-up, connection set-up and warm-up:
#   relay: `relay --rate RATE` (paced signals between matched pairs), per relayed message;
#   bare:  `bare` (join → matched → leave), per pairing.
# The server gets --rematch-cooldown-secs 0, so a pairing costs the same early and late in
# a run. Env: PORT (29911: below the ephemeral range, where a listener can clash with the
# sockets an earlier run left in TIME_WAIT), OUT (a temporary folder for the logs and
# callgrind files), RATE (300 msgs/s), PAIRS (50), CLIENTS (200), SHORT (3 s), LONG (9 s).
set -eu
[ $# -ge 2 ] || { echo "usage: $0 LOADGEN SERVER_BIN [SERVER_BIN…]" >&2; exit 2; }
LOADGEN=$1
shift
PORT=${PORT:-29911}
OUT=${OUT:-$(mktemp -d /tmp/callgrind-ab.XXXXXX)}
mkdir -p "$OUT"
RATE=${RATE:-300}
PAIRS=${PAIRS:-50}
CLIENTS=${CLIENTS:-200}
SHORT=${SHORT:-3}
LONG=${LONG:-9}
echo "output in $OUT" >&2

# run LABEL BIN LOADGEN-ARGS…: prints the server's instruction total.
run() {
    label=$1
    bin=$2
    shift 2
    rm -f "$OUT/$label.sqlite3"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$label.cg" "$bin" \
        --listen "127.0.0.1:$PORT" --db "$OUT/$label.sqlite3" --max-conns-per-ip 0 \
        --rate-per-sec 0 --rematch-cooldown-secs 0 --log warn >"$OUT/$label.log" 2>&1 &
    pid=$!
    i=0
    until ss -ltn | grep -q "127.0.0.1:$PORT "; do
        i=$((i + 1))
        if [ $i -gt 300 ] || ! kill -0 $pid 2>/dev/null; then
            echo "server $bin did not start; see $OUT/$label.log" >&2
            kill $pid 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
    "$LOADGEN" "$@" --server "ws://127.0.0.1:$PORT/ws" --server-pid $pid --json \
        >"$OUT/$label.json" 2>"$OUT/$label.err" || {
        echo "loadgen failed; see $OUT/$label.err" >&2
        kill $pid
        exit 1
    }
    # SIGINT: the server shuts down cleanly and callgrind writes its file.
    kill -INT $pid
    wait $pid || true
    awk '/^(summary|totals):/ { print $2; exit }' "$OUT/$label.cg"
}

for bin in "$@"; do
    name=$(basename "$bin")
    r1=$(run "$name-relay-short" "$bin" relay --rate "$RATE" --pairs "$PAIRS" --warmup 1 --duration "$SHORT")
    r2=$(run "$name-relay-long" "$bin" relay --rate "$RATE" --pairs "$PAIRS" --warmup 1 --duration "$LONG")
    n1=$(jq -r ".relay_rate_relayed * $SHORT" "$OUT/$name-relay-short.json")
    n2=$(jq -r ".relay_rate_relayed * $LONG" "$OUT/$name-relay-long.json")
    b1=$(run "$name-bare-short" "$bin" bare --clients "$CLIENTS" --warmup 1 --duration "$SHORT")
    b2=$(run "$name-bare-long" "$bin" bare --clients "$CLIENTS" --warmup 1 --duration "$LONG")
    p1=$(jq -r '.pairings' "$OUT/$name-bare-short.json")
    p2=$(jq -r '.pairings' "$OUT/$name-bare-long.json")
    awk -v name="$name" -v r1="$r1" -v r2="$r2" -v n1="$n1" -v n2="$n2" \
        -v b1="$b1" -v b2="$b2" -v p1="$p1" -v p2="$p2" 'BEGIN {
        printf "%s: %.0f instructions per relayed message (%.0f more messages), %.0f per pairing (%.0f more pairings)\n",
            name, (r2 - r1) / (n2 - n1), n2 - n1, (b2 - b1) / (p2 - p1), p2 - p1
    }'
done
