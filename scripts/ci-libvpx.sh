#!/usr/bin/env bash
# Installs a static libvpx with vcpkg for one vcpkg triplet and prints the variables
# that point the `env-libvpx-sys` build at it, one NAME=value per line (append them to
# $GITHUB_ENV, or `export` them). Used by the GitHub workflows on Windows
# (x64-windows-static-md) and for the macOS release slices (arm64-osx, x64-osx); Linux
# uses the distribution's libvpx-dev through pkg-config instead.
#
#   scripts/ci-libvpx.sh x64-windows-static-md >> "$GITHUB_ENV"
set -euo pipefail
triplet=${1:?usage: scripts/ci-libvpx.sh VCPKG_TRIPLET}

root=${VCPKG_INSTALLATION_ROOT:-${VCPKG_ROOT:-}}
if [ -z "$root" ] || [ ! -x "$root/vcpkg" ] && [ ! -x "$root/vcpkg.exe" ]; then
  # Not preinstalled on this runner: a shallow clone and its bootstrap (a minute).
  root="$HOME/vcpkg"
  [ -d "$root" ] || git clone --depth 1 https://github.com/microsoft/vcpkg "$root" >&2
  if [ -f "$root/bootstrap-vcpkg.bat" ] && [ "${OS:-}" = "Windows_NT" ]; then
    cmd //c "$root\\bootstrap-vcpkg.bat" -disableMetrics >&2
  else
    "$root/bootstrap-vcpkg.sh" -disableMetrics >&2
  fi
fi
vcpkg="$root/vcpkg"
[ -x "$vcpkg" ] || vcpkg="$root/vcpkg.exe"
"$vcpkg" install "libvpx:$triplet" >&2

prefix="$root/installed/$triplet"
if [ "${OS:-}" = "Windows_NT" ]; then
  # env-libvpx-sys links `libvpx.lib` for a static build on Windows; vcpkg names it vpx.lib.
  [ -f "$prefix/lib/libvpx.lib" ] || cp "$prefix/lib/vpx.lib" "$prefix/lib/libvpx.lib"
  # bindgen (env-libvpx-sys `generate`) needs libclang: the runner's LLVM.
  echo "LIBCLANG_PATH=C:\\Program Files\\LLVM\\bin"
fi
echo "VPX_LIB_DIR=$prefix/lib"
echo "VPX_INCLUDE_DIR=$prefix/include"
# Only checked against generated bindings, which `generate` makes from these headers.
echo "VPX_VERSION=vcpkg"
echo "VPX_STATIC=1"
