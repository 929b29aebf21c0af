# The two commands of the README:
#   make run    build and start the signaling server (http://localhost:3000, WebSocket at /ws)
#   make test   every check CI runs: format, lints, all tests, the Windows cross-check
# Both install missing system packages first (scripts/deps.sh, apt-get via sudo).

CARGO ?= cargo
WINDOWS_TARGET := x86_64-pc-windows-gnu
ARGS ?=

.PHONY: run app test deps deps-test fmt lint unit windows bench-server

run: deps
	$(CARGO) run --release -p peer-stream-server -- $(ARGS)

# The desktop app (a skeleton until the media engine lands).
app: deps
	$(CARGO) run --release -p peer-stream -- $(ARGS)

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
	$(CARGO) run --release -p peer-stream-server --bin peer-stream-loadgen -- all
