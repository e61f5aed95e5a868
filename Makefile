# BenchFS: two commands on a fresh Debian machine, as root.
#   make run   build, start a local cluster, run the standard benchmark, print and save the report
#   make test  formatting, lints, docs and every test
# Both install the system packages they need first (scripts/install-deps.sh).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build run test check fmt clippy doc unit coverage bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --bins

run: build
	scripts/run.sh

test: deps fmt clippy doc unit

fmt:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --workspace --all-targets -- -D warnings

doc: deps
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

unit: deps
	$(CARGO) test --workspace

bench: build
	$(CARGO) bench --workspace

# HTML coverage report in target/coverage/. cargo-tarpaulin's ptrace engine needs no
# LLVM tools beyond the compiler, so it works with the toolchain the machine has.
coverage: deps
	@command -v cargo-tarpaulin >/dev/null || $(CARGO) install cargo-tarpaulin --locked
	$(CARGO) tarpaulin --workspace --engine ptrace --out Html --output-dir target/coverage --skip-clean
	@echo "coverage report: target/coverage/tarpaulin-report.html"

clean:
	$(CARGO) clean
