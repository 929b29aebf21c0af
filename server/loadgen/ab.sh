#!/bin/sh
# Runs one loadgen scenario against several server binaries in turn (A B A B …), so a
# before/after comparison is measured side by side in one run on the same machine, and
# prints the chosen figures of each run (keys of the loadgen's --json output).
#
#   server/loadgen/ab.sh LOADGEN "KEY …" ROUNDS BIN_A BIN_B [BIN…] -- SCENARIO [ARGS…]
#
# e.g. (#11 item 5):
#   server/loadgen/ab.sh target/release/peer-stream-loadgen "rss_baseline_kib rss_per_conn_kib" \
#       2 /tmp/before /tmp/after -- idle --conns 19000
# The open-files limit is raised to the hard limit first (the loadgen and its idle
# workers hold one descriptor per connection). Env: OUT (a temporary folder for the JSON).
set -eu
[ $# -ge 6 ] || {
    echo "usage: $0 LOADGEN \"KEY …\" ROUNDS BIN_A BIN_B [BIN…] -- SCENARIO [ARGS…]" >&2
    exit 2
}
LOADGEN=$1
KEYS=$2
ROUNDS=$3
shift 3
BINS=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    BINS="$BINS $1"
    shift
done
[ $# -gt 1 ] || { echo "missing -- SCENARIO" >&2; exit 2; }
shift
ulimit -n "$(ulimit -Hn)"
OUT=${OUT:-$(mktemp -d /tmp/loadgen-ab.XXXXXX)}
mkdir -p "$OUT"
echo "output in $OUT" >&2
round=1
while [ $round -le "$ROUNDS" ]; do
    for bin in $BINS; do
        name=$(basename "$bin")
        json="$OUT/$name-$round.json"
        "$LOADGEN" "$@" --server-bin "$bin" --json >"$json" 2>"$OUT/$name-$round.err" || {
            echo "$name round $round failed; see $OUT/$name-$round.err" >&2
            continue
        }
        line="$name round $round:"
        for key in $KEYS; do
            line="$line $key=$(jq -c ".$key" "$json")"
        done
        if grep -q WARNING "$OUT/$name-$round.err"; then
            line="$line (disturbed: $(grep -c WARNING "$OUT/$name-$round.err") warning(s))"
        fi
        echo "$line"
    done
    round=$((round + 1))
done
