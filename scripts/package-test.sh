#!/usr/bin/env bash
# The package test of `make test` (target package-test): builds the Linux packages with
# the real packaging configuration from the debug binaries `cargo test` already built
# (scripts/package.sh --profile dev, into a temporary folder, not dist/), then checks:
#   - the exact file names (no Debian revision suffix), SHA256SUMS, control fields;
#   - the file lists: the server .deb holds the server binary only (no loadgen), the
#     app .deb the app only (no benchmark tools), a desktop entry, icons 16..512 and
#     AppStream metadata;
#   - both packages installed by dpkg into a scratch package database (dpkg --root, under
#     fakeroot when not root), the edited config kept on upgrade (conffile);
#   - both packages unpacked into a scratch root (dpkg-deb -x): both binaries answer
#     --version with the workspace version, from the scratch root and from the tar.gz;
#     the server, started with the unit's own ExecStart arguments and the packaged
#     /etc/peer-stream/server.toml, answers /healthz;
#   - desktop-file-validate, appstreamcli validate --no-net, systemd-analyze verify and
#     systemd-analyze security (offline) on the unpacked unit;
#   - the macOS .app made from the same configuration: Info.plist usage descriptions.
# Needs cargo-packager and the validators (scripts/deps.sh --test). Under CI=true a
# missing tool fails the test; elsewhere it skips with a message. Arguments (e.g.
# --no-build) go to scripts/package.sh.
set -euo pipefail

cd "$(dirname "$0")/.."

need=(dpkg dpkg-deb desktop-file-validate appstreamcli systemd-analyze sha256sum)
[ "$(id -u)" = 0 ] || need+=(fakeroot)
missing=()
for t in "${need[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
cargo packager --version >/dev/null 2>&1 || missing+=(cargo-packager)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "package-test: FAIL: missing ${missing[*]} (scripts/deps.sh --test installs them)" >&2
    exit 1
  fi
  echo "package-test: SKIPPED: missing ${missing[*]} (scripts/deps.sh --test installs them)" >&2
  exit 0
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  [ -z "$server_pid" ] || kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "package-test: FAIL: $*" >&2
  exit 1
}

version=$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml)
[ -n "$version" ] || fail "no workspace version"
[ "$(uname -m)" = x86_64 ] || fail "this test expects an x86_64 machine"

# Reuses target/debug when `cargo test` built it (cargo build is then a no-op).
scripts/package.sh --profile dev --out "$work/dist" "$@"
dist="$work/dist"

app_deb="peer-stream_${version}_amd64.deb"
server_deb="peer-stream-server_${version}_amd64.deb"
app_tar="peer-stream-${version}-x86_64-linux.tar.gz"
server_tar="peer-stream-server-${version}-x86_64-linux.tar.gz"
expected=$(printf '%s\n' SHA256SUMS "$app_deb" "$app_tar" "$server_deb" "$server_tar" | sort)
actual=$(ls "$dist" | sort)
[ "$actual" = "$expected" ] || fail "dist holds:"$'\n'"$actual"$'\n'"expected:"$'\n'"$expected"
(cd "$dist" && sha256sum --quiet -c SHA256SUMS) || fail "SHA256SUMS does not match"
[ "$(wc -l < "$dist/SHA256SUMS")" -eq 4 ] || fail "SHA256SUMS should list 4 files"

field() { dpkg-deb -f "$1" "$2"; }
for pair in "$app_deb:peer-stream" "$server_deb:peer-stream-server"; do
  deb=${pair%%:*}
  name=${pair#*:}
  [ "$(field "$dist/$deb" Package)" = "$name" ] || fail "$deb: Package is not $name"
  [ "$(field "$dist/$deb" Version)" = "$version" ] || fail "$deb: Version is not $version"
  [ "$(field "$dist/$deb" Architecture)" = amd64 ] || fail "$deb: Architecture is not amd64"
  [ -n "$(field "$dist/$deb" Maintainer)" ] || fail "$deb: no Maintainer"
done

# File lists: regular files, as absolute paths (dpkg-deb -c prints `ls -l`-like lines).
files() { dpkg-deb -c "$1" | awk '$1 !~ /^d/ {print $NF}' | sed 's#^\./##; s#^/##; s#^#/#' | sort; }
app_files=$(files "$dist/$app_deb")
server_files=$(files "$dist/$server_deb")
[ "$(grep '^/usr/bin/' <<<"$server_files")" = /usr/bin/peer-stream-server ] \
  || fail "server .deb binaries: $(grep '^/usr/bin/' <<<"$server_files" | tr '\n' ' ')"
! grep -q loadgen <<<"$server_files" || fail "server .deb contains the load generator"
grep -qx /usr/lib/systemd/system/peer-stream-server.service <<<"$server_files" \
  || fail "server .deb has no systemd unit"
[ "$(grep '^/usr/bin/' <<<"$app_files")" = /usr/bin/peer-stream ] \
  || fail "app .deb binaries: $(grep '^/usr/bin/' <<<"$app_files" | tr '\n' ' ')"
grep -qx /usr/share/applications/peer-stream.desktop <<<"$app_files" || fail "no desktop entry"
metainfo=/usr/share/metainfo/io.github.peer_stream.PeerStream.metainfo.xml
grep -qx "$metainfo" <<<"$app_files" || fail "no AppStream metainfo"
for s in 16 24 32 48 64 128 256 512; do
  grep -qx "/usr/share/icons/hicolor/${s}x${s}/apps/peer-stream.png" <<<"$app_files" \
    || fail "no ${s}x${s} icon"
done
if [ -f deploy/peer-stream-server.toml ]; then
  grep -qx /etc/peer-stream/server.toml <<<"$server_files" || fail "no /etc/peer-stream/server.toml"
  dpkg-deb -I "$dist/$server_deb" conffiles | grep -qx /etc/peer-stream/server.toml \
    || fail "/etc/peer-stream/server.toml is not a conffile"
  dpkg-deb --fsys-tarfile "$dist/$server_deb" | tar -xO ./etc/peer-stream/server.toml \
    | grep -x 'db = "/var/lib/peer-stream/peer-stream.sqlite3"' >/dev/null \
    || fail "the packaged server.toml does not name /var/lib/peer-stream/peer-stream.sqlite3"
fi

# Install both into a scratch root and run them from there.
rootfs="$work/root"
dpkg-deb -x "$dist/$app_deb" "$rootfs"
dpkg-deb -x "$dist/$server_deb" "$rootfs"
out=$("$rootfs/usr/bin/peer-stream" --version)
[ "$out" = "peer-stream $version" ] || fail "peer-stream --version printed: $out"
out=$("$rootfs/usr/bin/peer-stream-server" --version)
[ "$out" = "peer-stream-server $version" ] || fail "peer-stream-server --version printed: $out"

desktop-file-validate "$rootfs/usr/share/applications/peer-stream.desktop" \
  || fail "desktop-file-validate"
grep -qx 'Exec=peer-stream' "$rootfs/usr/share/applications/peer-stream.desktop" \
  || fail "desktop entry: Exec is not peer-stream"
grep -qx 'Icon=peer-stream' "$rootfs/usr/share/applications/peer-stream.desktop" \
  || fail "desktop entry: Icon is not peer-stream"
appstreamcli validate --no-net "$rootfs$metainfo" || fail "appstreamcli validate"
# A PNG's width and height are the big-endian words at bytes 16..23 (IHDR).
png_size() { od -An -tu1 -j16 -N8 "$1" | awk '{print $1*16777216+$2*65536+$3*256+$4 "x" $5*16777216+$6*65536+$7*256+$8}'; }
for s in 16 24 32 48 64 128 256 512; do
  got=$(png_size "$rootfs/usr/share/icons/hicolor/${s}x${s}/apps/peer-stream.png")
  [ "$got" = "${s}x${s}" ] || fail "the ${s}x${s} icon is $got"
done

# systemd-analyze verify wants ExecStart's binary to exist: verify the packaged unit with
# its path pointed at the unpacked binary (everything else unchanged). Any warning, such
# as an unknown or misspelt directive, fails the test.
mkdir -p "$work/unit"
unit="$work/unit/peer-stream-server.service"
sed "s#/usr/bin/peer-stream-server#$rootfs/usr/bin/peer-stream-server#g" \
  "$rootfs/usr/lib/systemd/system/peer-stream-server.service" > "$unit"
grep -q "^ExecStart=$rootfs/usr/bin/peer-stream-server " "$unit" || fail "unit: unexpected ExecStart"
warnings=$(systemd-analyze verify --man=no "$unit" 2>&1) || fail "systemd-analyze verify: $warnings"
[ -z "$warnings" ] || fail "systemd-analyze verify warned: $warnings"
for d in 'DynamicUser=yes' 'User=peer-stream' 'ProtectSystem=strict' 'StateDirectory=peer-stream' \
  'NoNewPrivileges=yes' 'PrivateTmp=yes' 'ProtectHome=yes' 'CapabilityBoundingSet='; do
  grep -qx "$d" "$unit" || fail "unit lacks $d"
done
grep -q -- '--db /var/lib/peer-stream/peer-stream.sqlite3' "$unit" || fail "unit: --db not in /var/lib/peer-stream"
# The exposure score of `systemd-analyze security`: 0 (locked down) .. 10 (unprotected);
# --threshold counts in tenths (20 = 2.0).
security=$(systemd-analyze security --offline=yes --threshold=20 "$unit" 2>&1) \
  || fail "systemd-analyze security above 2.0: $(tail -1 <<<"$security")"

# dpkg itself installs both into a fresh package database (under fakeroot when not
# root), then upgrades the server package over an edited /etc/peer-stream/server.toml,
# which must survive (it is a conffile). Dependencies are not installed there.
dpkgroot="$work/dpkg-root"
mkdir -p "$dpkgroot/var/lib/dpkg/info" "$dpkgroot/var/lib/dpkg/updates"
touch "$dpkgroot/var/lib/dpkg/status" "$dpkgroot/var/lib/dpkg/available"
asroot=()
[ "$(id -u)" = 0 ] || asroot=(fakeroot)
dpkg_root() {
  "${asroot[@]}" dpkg --root="$dpkgroot" --log="$work/dpkg-actions.log" --force-depends \
    --force-not-root --force-script-chrootless "$@" >> "$work/dpkg.log" 2>&1
}
dpkg_root -i "$dist/$server_deb" "$dist/$app_deb" || fail "dpkg -i: $(tail -5 "$work/dpkg.log")"
for p in peer-stream peer-stream-server; do
  dpkg --root="$dpkgroot" -s "$p" 2>/dev/null | grep -qx 'Status: install ok installed' \
    || fail "dpkg did not install $p: $(tail -5 "$work/dpkg.log")"
done
out=$("$dpkgroot/usr/bin/peer-stream-server" --version)
[ "$out" = "peer-stream-server $version" ] || fail "dpkg-installed server --version printed: $out"
if [ -f "$dpkgroot/etc/peer-stream/server.toml" ]; then
  echo "# edited by package-test" >> "$dpkgroot/etc/peer-stream/server.toml"
  dpkg_root --force-confold -i "$dist/$server_deb" || fail "dpkg upgrade: $(tail -5 "$work/dpkg.log")"
  tail -1 "$dpkgroot/etc/peer-stream/server.toml" | grep -qx '# edited by package-test' \
    || fail "reinstalling the server package overwrote the edited /etc/peer-stream/server.toml"
fi

# The unit's own command line, run from the scratch root (its /etc and state directory
# mapped into the temporary folder, listening on loopback): the packaged server starts
# with the packaged configuration and answers /healthz.
if [ -f "$rootfs/etc/peer-stream/server.toml" ]; then
  exec_start=$(sed -n 's/^ExecStart=//p' "$rootfs/usr/lib/systemd/system/peer-stream-server.service")
  exec_start=${exec_start//\/usr\/bin\//$rootfs/usr/bin/}
  exec_start=${exec_start//\/etc\/peer-stream\//$rootfs/etc/peer-stream/}
  exec_start=${exec_start//\/var\/lib\/peer-stream\//$work/state/}
  mkdir -p "$work/state"
  healthy=""
  for attempt in 1 2 3 4 5; do
    port=$((30000 + (RANDOM % 20000)))
    # shellcheck disable=SC2086 # the unit's arguments, split as systemd splits them
    $exec_start --listen "127.0.0.1:$port" > "$work/server.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      if { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null; then
        printf 'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
        reply=$(timeout 5 head -c 200 <&3 || true)
        exec 3>&- 3<&-
        case "$reply" in "HTTP/1."?" 200"*) healthy=yes; break ;; esac
      fi
      sleep 0.1
    done
    [ -n "$healthy" ] && break
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    grep -qi "address.*in use" "$work/server.log" || break
  done
  [ -n "$healthy" ] || fail "the unit's command line did not serve /healthz: $(tail -5 "$work/server.log")"
  [ -f "$work/state/peer-stream.sqlite3" ] || fail "the server made no database in its state directory"
  echo "package-test: the unit's command line serves /healthz (127.0.0.1:$port)"
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
fi

# The portable archives: the same binaries, runnable after unpacking.
mkdir -p "$work/tar"
tar -C "$work/tar" -xzf "$dist/$app_tar"
tar -C "$work/tar" -xzf "$dist/$server_tar"
out=$("$work/tar/peer-stream-${version}-x86_64-linux/bin/peer-stream" --version)
[ "$out" = "peer-stream $version" ] || fail "tar.gz peer-stream --version printed: $out"
out=$("$work/tar/peer-stream-server-${version}-x86_64-linux/peer-stream-server" --version)
[ "$out" = "peer-stream-server $version" ] || fail "tar.gz peer-stream-server --version printed: $out"
[ -f "$work/tar/peer-stream-server-${version}-x86_64-linux/peer-stream-server.service" ] \
  || fail "server tar.gz has no unit"

# The macOS bundle configuration, checked here too: cargo-packager's .app format runs on
# Linux (the release workflow signs it and makes the .dmg on macOS). Its Info.plist must
# carry the camera and microphone usage descriptions, or macOS kills the app on first use.
cargo packager -p peer-stream --formats app --out-dir "$work/macos" >/dev/null 2>&1 \
  || cargo packager -p peer-stream --formats app --out-dir "$work/macos" || fail "cargo packager --formats app"
plist="$work/macos/Peer Stream.app/Contents/Info.plist"
for key in NSCameraUsageDescription NSMicrophoneUsageDescription CFBundleIconFile; do
  grep -q "<key>$key</key>" "$plist" || fail "Info.plist has no $key"
done
grep -A1 '<key>CFBundleShortVersionString</key>' "$plist" | grep -q "<string>$version</string>" \
  || fail "Info.plist: CFBundleShortVersionString is not $version"
[ -x "$work/macos/Peer Stream.app/Contents/MacOS/peer-stream" ] || fail "the .app has no executable"
[ -s "$work/macos/Peer Stream.app/Contents/Resources/Peer Stream.icns" ] || fail "the .app has no icon"

echo "package-test: ok ($app_deb, $server_deb, both tar.gz, macOS .app layout; $(tail -1 <<<"$security" | sed 's/^→ //'))"
