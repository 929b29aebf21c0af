# The two commands of the README:
#   make run    build and open the desktop app (it hosts its own signaling server)
#   make test   every check CI runs: format, lints, all tests, the Windows cross-check
# Both install missing system packages first (scripts/deps.sh, apt-get via sudo).

CARGO ?= cargo
WINDOWS_TARGET := x86_64-pc-windows-gnu
ARGS ?=

.PHONY: run server test deps deps-test fmt lint unit windows bench-server bench-call

run: deps
	$(CARGO) run --release -p peer-stream -- $(ARGS)

# The standalone signaling server (http://0.0.0.0:3000, WebSocket at /ws).
server: deps
	$(CARGO) run --release -p peer-stream-server -- $(ARGS)

test: deps-test fmt lint unit windows

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

windows:
	$(CARGO) check --workspace --all-targets --locked --target $(WINDOWS_TARGET)

bench-server:
	$(CARGO) build --release -p peer-stream-server
	for s in bare full relay idle; do $(CARGO) run --release -p peer-stream-server --bin peer-stream-loadgen -- $$s || exit 1; done

bench-call:
	$(CARGO) build --release -p peer-stream -p peer-stream-server
	$(CARGO) run --release -p peer-stream --bin call-bench
