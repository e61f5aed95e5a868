# BenchFS: two commands on a fresh Debian machine, as root.
#   make run   build, start a local cluster, run the standard benchmark, print and save the report
#   make test  formatting, lints, docs and every test
#   make fuzz  a long run of every decoder fuzz test (BENCHFS_FUZZ_CASES=200000 each)
#   make install PREFIX=DIR  benchfsd, benchfs, libbenchfs, benchfs.h and benchfs.pc
# Both install the system packages they need first (scripts/install-deps.sh).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build install run test check fmt clippy doc unit fuzz coverage bench clean

all: build

deps:
	@scripts/install-deps.sh

build: deps
	$(CARGO) build --release --bins

# PROFILE=dev installs the debug build (the tests install one into a temporary prefix).
PREFIX ?= /usr/local
PROFILE ?= release
BUILD_DIR = target/$(if $(filter dev,$(PROFILE)),debug,$(PROFILE))
install: deps
	$(CARGO) build --profile $(PROFILE) -p benchfs -p benchfs-capi
	scripts/install.sh $(PREFIX) $(BUILD_DIR)

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

# Every decoder fuzz test, long: BENCHFS_FUZZ_CASES cases each (make test runs the short
# default of each test).
# Built optimised with overflow checks and debug assertions kept, so an overflow still
# panics: the `fuzz` profile, defined here, builds into target/fuzz.
BENCHFS_FUZZ_CASES ?= 200000
FUZZ = BENCHFS_FUZZ_CASES=$(BENCHFS_FUZZ_CASES) CARGO_PROFILE_FUZZ_INHERITS=release \
	CARGO_PROFILE_FUZZ_OVERFLOW_CHECKS=true CARGO_PROFILE_FUZZ_DEBUG_ASSERTIONS=true \
	$(CARGO) test --profile fuzz

fuzz: deps
	$(FUZZ) -p benchfs-proto --test decode_fuzz
	$(FUZZ) -p benchfs-config --test decode_fuzz
	$(FUZZ) -p benchfs-server --lib journal::tests::fuzz
	$(FUZZ) --test rpc_malformed arbitrary_frames_never_stop_the_server

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
