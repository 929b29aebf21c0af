#!/usr/bin/env bash
# Remakes docs/desktop-setup-check.png: the real app window under Xvfb on its "Check my
# setup" screen (--check-screen, --fake-media), checking a local server that hands out
# STUN and TURN on a local coturn. Needs xvfb-run, coturn's turnserver and ImageMagick's
# `import`; builds the debug binaries first.
#
#   scripts/screenshot-setup-check.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/desktop-setup-check.png}
cargo build -q -p peer-stream --bin peer-stream -p peer-stream-server --bin peer-stream-server
target=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"; }
turn_port=$(free_port SOCK_DGRAM)
server_port=$(free_port SOCK_STREAM)
secret=screenshot-secret

turnserver -n --listening-ip 127.0.0.1 --relay-ip 127.0.0.1 --listening-port "$turn_port" \
  --use-auth-secret --static-auth-secret "$secret" --realm screenshot.test \
  --no-tls --no-dtls --no-cli --allow-loopback-peers \
  --pidfile "$work/turn.pid" --userdb "$work/turndb" --log-file "$work/turn.log" \
  >/dev/null 2>&1 &
pids+=($!)
"$target/peer-stream-server" --listen "127.0.0.1:$server_port" --db "$work/server.sqlite3" \
  --stun "stun:127.0.0.1:$turn_port" --turn "turn:127.0.0.1:$turn_port?transport=udp" \
  --turn-secret "$secret" >"$work/server.log" 2>&1 &
pids+=($!)
sleep 2

# Saved settings as eframe writes them: this server, the first-run notice accepted.
mkdir -p "$work/data/peer-stream"
cat >"$work/data/peer-stream/app.ron" <<RON
{
    "peer-stream-settings": "(server_url:\"ws://127.0.0.1:$server_port/ws\",accepted_notice:true)",
}
RON

XDG_DATA_HOME="$work/data" HOME="$work/data" LIBGL_ALWAYS_SOFTWARE=1 \
  xvfb-run -a -s "-screen 0 1120x720x24" sh -c "
    '$target/peer-stream' --fake-media --check-screen --duration 20 --log warn >/dev/null 2>'$work/app.log' &
    sleep 14
    import -window root '$work/shot.png'
    wait"
cp "$work/shot.png" "$out"
echo "saved $out"
