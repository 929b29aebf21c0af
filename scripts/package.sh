#!/usr/bin/env bash
# Builds the Linux packages of Peer Stream with cargo-packager (README "Packaging"):
#
#   dist/peer-stream_<version>_amd64.deb                 the desktop app (desktop entry,
#                                                        icons 16..512, AppStream metadata)
#   dist/peer-stream-server_<version>_amd64.deb          the server binary only, its hardened
#                                                        systemd unit, /etc/peer-stream/server.toml
#   dist/peer-stream-<version>-x86_64-linux.tar.gz        the app, unpack into ~/.local
#   dist/peer-stream-server-<version>-x86_64-linux.tar.gz the server, unit, example config
#   dist/SHA256SUMS
#
# Usage: scripts/package.sh [--profile release|dev] [--out DIR] [--no-build]
#   --profile release (default) builds optimized binaries (what `make package` ships);
#   --profile dev packages the debug binaries `cargo test` already built (target/debug),
#     with the same packaging configuration: the cheap path `make test` uses.
#   --no-build packages whatever binaries the profile's directory holds.
# The packaging configuration is in client/Cargo.toml and server/Cargo.toml
# ([package.metadata.packager]); cargo-packager comes from `scripts/deps.sh --package`.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD

profile=release
out=dist
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?--profile needs release or dev}"; shift 2 ;;
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "package: unknown argument $1" >&2; exit 2 ;;
  esac
done

case "$profile" in
  release) profile_dir=release; cargo_profile=(--release); packager_profile=(--release) ;;
  # cargo-packager looks in target/debug by default, which is the dev profile's folder.
  dev | debug) profile_dir=debug; cargo_profile=(); packager_profile=() ;;
  *) echo "package: --profile must be release or dev, not $profile" >&2; exit 2 ;;
esac

cargo=${CARGO:-cargo}
if ! $cargo packager --version >/dev/null 2>&1; then
  echo "package: cargo-packager is missing; run scripts/deps.sh --package" >&2
  exit 1
fi

version=$(sed -n '/^\[workspace\.package\]/,/^\[/{s/^version *= *"\(.*\)"/\1/p}' Cargo.toml)
[ -n "$version" ] || { echo "package: no version in Cargo.toml [workspace.package]" >&2; exit 1; }
case "$(uname -m)" in
  x86_64) deb_arch=amd64 ;;
  aarch64) deb_arch=arm64 ;;
  *) deb_arch=$(uname -m) ;;
esac
arch=$(uname -m)

target_dir=${CARGO_TARGET_DIR:-$root/target}
bins="$target_dir/$profile_dir"

if [ "$build" = 1 ]; then
  $cargo build --locked "${cargo_profile[@]}" -p peer-stream -p peer-stream-server \
    --bin peer-stream --bin peer-stream-server
fi
for b in peer-stream peer-stream-server; do
  [ -x "$bins/$b" ] || { echo "package: $bins/$b is missing (build it first)" >&2; exit 1; }
done

# Staging: what the packager config refers to by a fixed path (server/Cargo.toml).
stage="$root/target/packaging"
rm -rf "$stage"
mkdir -p "$stage/server-etc" "$stage/out"
example="$root/deploy/peer-stream-server.toml"
if [ -f "$example" ]; then
  # The packaged config names the service's database, so the moderation commands
  # (`peer-stream-server --config /etc/peer-stream/server.toml bans list`) find it.
  sed 's#^db = .*#db = "/var/lib/peer-stream/peer-stream.sqlite3"#' "$example" \
    > "$stage/server-etc/server.toml"
  chmod 0644 "$stage/server-etc/server.toml"
  grep -qx 'db = "/var/lib/peer-stream/peer-stream.sqlite3"' "$stage/server-etc/server.toml" \
    || { echo "package: $example has no db line to point at /var/lib/peer-stream" >&2; exit 1; }
fi

echo "package: cargo packager (deb) for peer-stream $version from $bins"
$cargo packager -p peer-stream,peer-stream-server --formats deb \
  "${packager_profile[@]}" --out-dir "$stage/out"

mkdir -p "$out"
out=$(cd "$out" && pwd)
app_deb="peer-stream_${version}_${deb_arch}.deb"
server_deb="peer-stream-server_${version}_${deb_arch}.deb"
for f in "$app_deb" "$server_deb"; do
  [ -f "$stage/out/$f" ] || { echo "package: cargo-packager made no $f" >&2; ls -la "$stage/out" >&2; exit 1; }
  rm -f "$out/$f"
  mv "$stage/out/$f" "$out/$f"
done

# cargo-packager 0.11 writes no `conffiles` list, so dpkg would overwrite an edited
# /etc/peer-stream/server.toml on upgrade. Add the list to the server package.
if [ -f "$stage/server-etc/server.toml" ]; then
  tree="$stage/server-deb"
  dpkg-deb -R "$out/$server_deb" "$tree"
  (cd "$tree" && find etc -type f | sort | sed 's#^#/#') > "$tree/DEBIAN/conffiles"
  dpkg-deb --root-owner-group -Zgzip -b "$tree" "$out/$server_deb" >/dev/null
fi

# Portable archives, laid out like /usr (the app) or as a folder to copy (the server).
app_tar="peer-stream-${version}-${arch}-linux"
rm -rf "${stage:?}/$app_tar" "$stage/app-data"
dpkg-deb -x "$out/$app_deb" "$stage/app-data"
mkdir -p "$stage/$app_tar"
cp -a "$stage/app-data/usr/." "$stage/$app_tar/"
cat > "$stage/$app_tar/README.txt" <<EOF
Peer Stream $version for Linux ($arch).

Run bin/peer-stream, or install for your user (menu entry and icon included):
  tar -xzf $app_tar.tar.gz --strip-components=1 -C ~/.local
It needs ALSA (libasound2) and an X11 or Wayland desktop with OpenGL.
EOF
tar -C "$stage" --owner=0 --group=0 -czf "$out/$app_tar.tar.gz" "$app_tar"

server_tar="peer-stream-server-${version}-${arch}-linux"
rm -rf "${stage:?}/$server_tar"
mkdir -p "$stage/$server_tar"
install -m 0755 "$bins/peer-stream-server" "$stage/$server_tar/peer-stream-server"
install -m 0644 deploy/peer-stream-server.service "$stage/$server_tar/"
[ -f "$example" ] && install -m 0644 "$example" "$stage/$server_tar/peer-stream-server.toml"
cat > "$stage/$server_tar/README.txt" <<EOF
Peer Stream server $version for Linux ($arch): one binary, no runtime dependencies.

  ./peer-stream-server --help
  ./peer-stream-server --listen 0.0.0.0:3000 --db ./peer-stream.sqlite3

As a service: copy peer-stream-server to /usr/bin, peer-stream-server.service to
/etc/systemd/system/ (it runs as a dedicated user with its state in /var/lib/peer-stream)
and peer-stream-server.toml to /etc/peer-stream/server.toml (the unit reads it; set
db = "/var/lib/peer-stream/peer-stream.sqlite3" there so the moderation commands find the
database), then: sudo systemctl daemon-reload && sudo systemctl enable --now peer-stream-server
EOF
tar -C "$stage" --owner=0 --group=0 -czf "$out/$server_tar.tar.gz" "$server_tar"

(cd "$out" && sha256sum "$app_deb" "$server_deb" "$app_tar.tar.gz" "$server_tar.tar.gz" > SHA256SUMS)
echo "package: done ($profile):"
(cd "$out" && ls -l "$app_deb" "$server_deb" "$app_tar.tar.gz" "$server_tar.tar.gz" SHA256SUMS)
